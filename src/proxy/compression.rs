//! The response compression a `compression` step asks for, on Pingora's proxy path: a
//! downstream module of the session, so that it sees every way a response ends — the end of
//! its body, and the end Pingora signals apart from it (a tile revalidated and served from the
//! cache ends so) — and the encoder is always finished.
//!
//! The head is decided in the proxy's response phase (where the other header edits are made);
//! the module only encodes the body. A response is left as the upstream sent it when it is a
//! part of its resource (`206`, `Content-Range`), says `no-transform`, is a stream of events
//! (each event must reach the client when it comes), or is of a type not worth compressing.

use std::borrow::Cow;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE};
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, Module, ModuleBuilder};
use pingora_core::protocols::http::compression::ResponseCompressionCtx;
use pingora_core::{ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// The module's state for one request: the compression its pipeline asked for, if any.
#[derive(Default)]
pub struct Compress {
    ctx: Option<Box<ResponseCompressionCtx>>,
    /// The request is a HEAD: its head says what a GET's would, it has no body to encode.
    head: bool,
    level: u32,
    /// Brotli's encoder, when the answer is coded so: Pingora's flushes the stream at its end
    /// but never closes it, and a brotli stream without its last block is one no client can
    /// decode.
    brotli: Option<Box<brotli::CompressorWriter<Vec<u8>>>>,
}

struct Builder;

impl HttpModuleBuilder for Builder {
    fn init(&self) -> Module {
        Box::<Compress>::default()
    }
}

/// The module, for the proxy's downstream modules.
pub fn module() -> ModuleBuilder {
    Box::new(Builder)
}

/// The request's pipeline asked for compression at `level`.
pub fn start(session: &mut Session, level: u32) {
    let mut c = ResponseCompressionCtx::new(level, false, false);
    c.request_filter(&preferred_encodings(session.req_header()));
    let head = session.req_header().method == http::Method::HEAD;
    if let Some(m) = session.downstream_modules_ctx.get_mut::<Compress>() {
        m.ctx = Some(Box::new(c));
        m.head = head;
        m.level = level;
    }
}

/// Whether the response may be compressed: its pipeline asks for it and the client accepts
/// a coding.
pub fn may_compress(session: &Session, resp: &ResponseHeader) -> bool {
    session
        .downstream_modules_ctx
        .get::<Compress>()
        .is_some_and(|m| m.ctx.is_some())
        && !resp.headers.contains_key(CONTENT_ENCODING)
        && transformable(resp)
        && session
            .req_header()
            .headers
            .get(ACCEPT_ENCODING)
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
}

/// Decides the response's compression and makes its head say so (`Content-Encoding`, `Vary`,
/// a weak `ETag`, no `Content-Length`). `true`: its body will be encoded.
pub fn response_header(session: &mut Session, resp: &mut ResponseHeader) -> bool {
    let Some(m) = session.downstream_modules_ctx.get_mut::<Compress>() else {
        return false;
    };
    let Some(c) = m.ctx.as_mut() else {
        return false;
    };
    // An interim answer (`100 Continue`, `103 Early Hints`): the final one decides.
    if resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    if !transformable(resp) {
        m.ctx = None;
        return false;
    }
    // A HEAD's head is a GET's (RFC 9110 §9.3.2): decided as if its body were coming; the
    // encoder is dropped unused.
    let no_body = matches!(resp.status.as_u16(), 204 | 304);
    c.response_header_filter(resp, no_body);
    let coding = resp
        .headers
        .get(CONTENT_ENCODING)
        .filter(|_| c.is_enabled());
    let encodes = coding.is_some();
    if coding.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"br")) && !m.head {
        // The quality as Pingora's encoder takes the level, its window (2^19 bytes).
        let writer = brotli::CompressorWriter::new(Vec::new(), 4096, m.level, 19);
        m.brotli = Some(Box::new(writer));
    }
    if m.head {
        m.ctx = None;
    }
    encodes
}

/// Whether a response may be compressed at all (its type aside, which Pingora's choice reads
/// too): not a part of a resource, not `no-transform` (RFC 9110 §7.7), not an event stream,
/// a type that compresses.
fn transformable(resp: &ResponseHeader) -> bool {
    if resp.status == http::StatusCode::PARTIAL_CONTENT || resp.headers.contains_key(CONTENT_RANGE)
    {
        return false;
    }
    let no_transform = resp.headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    if no_transform {
        return false;
    }
    let Some(ct) = resp.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    compressible_type(ct)
}

/// Types worth compressing: text (but event streams), and the structured types among
/// `application/*` (JSON, XML, JavaScript, forms, YAML, WebAssembly, protocol buffers — vector
/// tiles), SVG and icons; not the binary and already compressed ones (`octet-stream`, PDF,
/// archives).
fn compressible_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "text" => sub != "event-stream",
        "application" => {
            const STRUCTURED: [&str; 9] = [
                "json",
                "xml",
                "javascript",
                "ecmascript",
                "x-www-form-urlencoded",
                "yaml",
                "wasm",
                "protobuf",
                "vnd.mapbox-vector-tile",
            ];
            // (Office's XML formats are zip archives.)
            !sub.contains("zip")
                && !sub.contains("openxmlformats")
                && STRUCTURED.iter().any(|s| sub.contains(s))
        }
        "image" => matches!(sub, "svg+xml" | "x-icon" | "vnd.microsoft.icon"),
        "font" => true,
        _ => false,
    }
}

#[async_trait]
impl HttpModule for Compress {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn response_body_filter(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        // Before a head was decided (an error reply the gateway makes when the upstream
        // failed), there is nothing to encode.
        if self.ctx.as_ref().is_some_and(|c| c.is_header_phase()) {
            return Ok(());
        }
        if let Some(w) = self.brotli.as_mut() {
            brotli_write(w, body.as_deref().unwrap_or_default())?;
            if end {
                *body = self.brotli.take().map(brotli_end);
                self.ctx = None;
            } else {
                *body = Some(std::mem::take(w.get_mut()).into());
            }
        } else if let Some(c) = self.ctx.as_mut().filter(|c| c.is_enabled()) {
            if let Some(encoded) = c.response_body_filter(body.as_ref(), end) {
                *body = Some(encoded);
            }
            if end {
                self.ctx = None;
            }
        }
        Ok(())
    }

    /// The response ended apart from its body (a body served from the cache ends so): the
    /// encoder's last bytes.
    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        if self.ctx.as_ref().is_some_and(|c| c.is_header_phase()) {
            return Ok(None);
        }
        if let Some(w) = self.brotli.take() {
            self.ctx = None;
            return Ok(Some(brotli_end(w)));
        }
        match self.ctx.take() {
            Some(mut c) if c.is_enabled() => Ok(c.response_body_filter(None, true)),
            _ => Ok(None),
        }
    }
}

/// Encodes a piece of the body into the writer's buffer.
fn brotli_write(w: &mut brotli::CompressorWriter<Vec<u8>>, data: &[u8]) -> Result<()> {
    use std::io::Write;
    w.write_all(data)
        .or_err(ErrorType::InternalError, "while compressing with brotli")
}

/// The stream's end: what the writer holds, then its last block (it closes the stream only
/// when it is given up).
fn brotli_end(w: Box<brotli::CompressorWriter<Vec<u8>>>) -> Bytes {
    w.into_inner().into()
}

/// The request as the compression step reads it: its `Accept-Encoding` cut to the codings the
/// client ranks highest (none with `q=0`, which refuses a coding), since Pingora's choice reads
/// the names only (`gzip;q=0` got gzip, `br;q=0.1, gzip` got br).
fn preferred_encodings(req: &RequestHeader) -> Cow<'_, RequestHeader> {
    let Some(accept) = req
        .headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.contains(';'))
        .map(str::to_string)
    else {
        // Without q-values every coding named is as welcome: the head as it is.
        return Cow::Borrowed(req);
    };
    let mut req = req.clone();
    let codings: Vec<(&str, f32)> = accept
        .split(',')
        .filter_map(|part| {
            let mut it = part.split(';');
            let coding = it.next()?.trim();
            let q = it
                .filter_map(|p| {
                    let p = p.trim();
                    p.get(..2)
                        .filter(|k| k.eq_ignore_ascii_case("q="))
                        .map(|_| &p[2..])
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!coding.is_empty() && q > 0.0).then_some((coding, q))
        })
        .collect();
    let best = codings.iter().map(|(_, q)| *q).fold(0.0, f32::max);
    let kept: Vec<&str> = codings
        .iter()
        .filter(|(_, q)| *q >= best)
        .map(|(c, _)| *c)
        .collect();
    if kept.is_empty() {
        req.remove_header(&ACCEPT_ENCODING);
    } else if let Ok(v) = http::HeaderValue::from_str(&kept.join(", ")) {
        let _ = req.insert_header(ACCEPT_ENCODING, v);
    }
    Cow::Owned(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(accept: &str) -> Option<String> {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("accept-encoding", accept)
            .expect("header");
        preferred_encodings(&req)
            .headers
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap_or("").to_string())
    }

    #[test]
    fn the_codings_the_client_ranks_highest() {
        assert_eq!(kept("gzip, br").as_deref(), Some("gzip, br"));
        assert_eq!(kept("gzip;q=0"), None);
        assert_eq!(kept("gzip;Q=0"), None);
        assert_eq!(kept("gzip;q=0, br;q=0"), None);
        assert_eq!(kept("br;q=0.1, gzip").as_deref(), Some("gzip"));
        assert_eq!(
            kept("gzip;q=0.5, br;q=0.5, zstd;q=0").as_deref(),
            Some("gzip, br")
        );
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("response");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn parts_no_transform_and_event_streams_pass_as_they_are() {
        let text = ("content-type", "text/plain");
        assert!(transformable(&response(200, &[text])));
        assert!(!transformable(&response(206, &[text])));
        assert!(!transformable(&response(
            200,
            &[text, ("content-range", "bytes 0-9/100")]
        )));
        assert!(!transformable(&response(
            200,
            &[text, ("cache-control", "max-age=60, No-Transform")]
        )));
        assert!(!transformable(&response(
            200,
            &[("content-type", "text/event-stream; charset=utf-8")]
        )));
        assert!(!transformable(&response(200, &[])));
    }

    #[test]
    fn structured_types_compress_binary_ones_do_not() {
        for t in [
            "text/html",
            "application/json",
            "application/geo+json",
            "application/vnd.ogc.wms_xml",
            "application/x-protobuf",
            "application/vnd.mapbox-vector-tile",
            "image/svg+xml",
            "Application/JSON; charset=utf-8",
        ] {
            assert!(compressible_type(t), "{t}");
        }
        for t in [
            "application/octet-stream",
            "application/pdf",
            "application/x-xz",
            "application/gzip",
            "application/zip",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "image/png",
            "image/jpeg",
            "video/mp4",
            "nonsense",
        ] {
            assert!(!compressible_type(t), "{t}");
        }
    }
}
