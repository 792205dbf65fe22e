//! Consumers: users, applications, scopes and credentials — their model and EG's Redis layout,
//! the management service, and the in-memory cache every authentication is answered from.

pub mod cache;
pub mod layout;
pub mod model;
pub mod models;
pub mod populate;
pub mod service;
pub mod setup;
