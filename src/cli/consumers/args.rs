//! The arguments of `tollgate users|apps|scopes|credentials`, as EG's CLI takes them.

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct Props {
    /// A property `key=value` (repeatable); values that parse as JSON are sent as JSON.
    #[arg(short = 'p', long = "property", value_name = "KEY=VALUE")]
    pub props: Vec<String>,
    /// Read the properties as a JSON object from standard input.
    #[arg(long)]
    pub stdin: bool,
}

#[derive(Subcommand)]
pub enum UsersCmd {
    /// List users.
    List(Quiet),
    /// Show one user (by username or id).
    Info(OneQuiet),
    /// Create a user.
    Create(CreateUser),
    /// Change a user's properties.
    Update(Update),
    /// Activate users.
    Activate(Many),
    /// Deactivate users (and their applications).
    Deactivate(Many),
    /// Remove users with their applications and credentials.
    Remove(Many),
}

#[derive(Subcommand)]
pub enum AppsCmd {
    /// List applications.
    List(Quiet),
    /// Show one application (by id or name).
    Info(OneQuiet),
    /// Create an application for a user.
    Create(CreateApp),
    /// Change an application's properties.
    Update(Update),
    /// Activate applications.
    Activate(Many),
    /// Deactivate applications.
    Deactivate(Many),
    /// Remove applications with their credentials.
    Remove(Many),
}

#[derive(Subcommand)]
pub enum ScopesCmd {
    /// List scopes.
    List(Quiet),
    /// Show one scope.
    Info(OneQuiet),
    /// Create scopes.
    Create(Many),
    /// Remove scopes (and take them from every credential).
    Remove(Many),
}

#[derive(Subcommand)]
pub enum CredentialsCmd {
    /// List credentials (every consumer's, or one consumer's with -c).
    List(ListCredentials),
    /// Show one credential.
    Info(OneCredential),
    /// Create a credential for a consumer (user or application).
    Create(CreateCredential),
    /// Activate a credential.
    Activate(OneCredential),
    /// Deactivate a credential.
    Deactivate(OneCredential),
    /// Remove a credential.
    Remove(OneCredential),
    /// Add, remove or set a credential's scopes.
    #[command(subcommand)]
    Scopes(CredentialScopesCmd),
}

#[derive(Subcommand)]
pub enum CredentialScopesCmd {
    Add(CredentialScopes),
    Remove(CredentialScopes),
    Set(CredentialScopes),
}

#[derive(Args)]
pub struct Quiet {
    /// Print only names or ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct OneQuiet {
    pub id: String,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct Many {
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct Update {
    pub id: String,
    #[command(flatten)]
    pub props: Props,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CreateUser {
    #[command(flatten)]
    pub props: Props,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CreateApp {
    /// The owning user (username or id).
    #[arg(short = 'u', long = "user")]
    pub user: String,
    #[command(flatten)]
    pub props: Props,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct ListCredentials {
    /// Only this consumer's (user or application, by name or id).
    #[arg(short = 'c', long = "consumer")]
    pub consumer: Option<String>,
    /// `active` (default), `archived` (inactive) or `all` (another is refused, as EG's
    /// `Unrecognised filter type`: it meant `active`).
    #[arg(short = 'f', long = "filter", default_value = "active", value_parser = ["active", "archived", "all"])]
    pub filter: String,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct OneCredential {
    /// keyId (key-auth, jwt) or consumer id (basic-auth, oauth2).
    pub id: String,
    #[arg(short = 't', long = "type")]
    pub kind: String,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CreateCredential {
    /// The consumer (with `--stdin`, each credential's `consumer` field stands for it).
    #[arg(short = 'c', long = "consumer", required_unless_present = "stdin")]
    pub consumer: Option<String>,
    /// key-auth, jwt, basic-auth or oauth2 (with `--stdin`, each credential's `type` field
    /// stands for it).
    #[arg(short = 't', long = "type", required_unless_present = "stdin")]
    pub kind: Option<String>,
    #[command(flatten)]
    pub props: Props,
    /// Print only `keyId:keySecret` (or `consumerId:password`).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CredentialScopes {
    pub id: String,
    #[arg(short = 't', long = "type")]
    pub kind: String,
    /// At least one, as EG's `<scopes..>` (none set them all away, and reported success).
    #[arg(required = true)]
    pub scopes: Vec<String>,
}
