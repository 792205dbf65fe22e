//! `compression` (tollgate): compress text responses — capabilities XML, GeoJSON, JSON — with
//! brotli, zstd or gzip, as the client accepts, when the upstream did not. Images and other
//! compressed types pass untouched (by content type), as do responses under 20 bytes. Only
//! requests of a pipeline with this step pay anything; the tile path does not. A strong `ETag`
//! is weakened, `Vary: Accept-Encoding` added, and the body streamed.

use serde::Deserialize;

use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// Compression level (1–9 for gzip; brotli and zstd use the same number).
    #[serde(default = "default_level")]
    level: u32,
}

fn default_level() -> u32 {
    5
}

pub struct Compression {
    level: u32,
}

impl Compression {
    pub fn build(p: Params) -> Result<Compression, String> {
        if !(1..=9).contains(&p.level) {
            return Err("`level` must be between 1 and 9".into());
        }
        Ok(Compression { level: p.level })
    }
}

impl Policy for Compression {
    fn on_request(&self, _req: &Request<'_>, x: &mut Exchange) -> Outcome {
        x.compress = Some(self.level);
        Outcome::Continue
    }
}
