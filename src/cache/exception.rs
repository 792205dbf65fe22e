//! OGC service exceptions. A WMS server that cannot draw a map (its database away, a layer's
//! data missing) answers the GetMap with an XML exception report and status 200: MapServer
//! and GeoServer send `application/vnd.ogc.se_xml` for WMS 1.1.1 and `text/xml` for WMS 1.3.0,
//! the version OpenLayers asks for. A cache that judged it by its status alone would store the
//! report as the tile for everyone until it expired. Such an answer is never stored (and the
//! tile is not remembered as one not to cache: the next miss asks again), and where a stale
//! copy of the tile may stand in for a failure (its stale-if-error window) it answers in the
//! report's place, as for a 5xx. GeoWebCache and MapProxy refuse such answers alike.

use pingora_http::ResponseHeader;

/// The reason a service exception is not stored.
pub const SERVICE_EXCEPTION: &str = "service exception";

/// The media types that are exception reports whatever was asked (WMS 1.1).
const REPORTS: [&str; 2] = ["application/vnd.ogc.se_xml", "application/vnd.ogc.se+xml"];
/// The media types that are exception reports when a map or a tile was asked for (WMS 1.3.0,
/// WMTS key-value requests).
const XML: [&str; 2] = ["text/xml", "application/xml"];

/// Whether `resp` is a service exception: a 2xx answer of an exception report's media type,
/// or an XML one when `map_request` (asked only then) says a map or a tile was asked for.
pub fn is_service_exception(resp: &ResponseHeader, map_request: impl FnOnce() -> bool) -> bool {
    if !resp.status.is_success() {
        return false;
    }
    let Some(value) = resp.headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let media = value
        .iter()
        .position(|b| *b == b';')
        .map_or(value, |end| &value[..end])
        .trim_ascii();
    let is = |types: &[&str]| {
        types
            .iter()
            .any(|t| media.eq_ignore_ascii_case(t.as_bytes()))
    };
    is(&REPORTS) || (is(&XML) && map_request())
}

/// Whether the request the exchange sends upstream asks for a map or a tile (see
/// [`is_map_request`]).
pub fn asks_for_map(x: &crate::pipeline::Exchange) -> bool {
    let path = x.proxy.as_ref().map(|p| p.path.as_str());
    is_map_request(path.and_then(|p| p.split_once('?')).map(|(_, q)| q))
}

/// Whether a request's query asks for a map or a tile: its `REQUEST` parameter (the name and
/// the value compared without case, as OGC's key-value encoding has them) is `GetMap` or
/// `GetTile`.
pub fn is_map_request(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            name.eq_ignore_ascii_case("request")
                && (value.eq_ignore_ascii_case("GetMap") || value.eq_ignore_ascii_case("GetTile"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, ctype: Option<&str>) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("a head");
        if let Some(c) = ctype {
            r.insert_header("content-type", c).expect("a header");
        }
        r
    }

    #[test]
    fn exception_reports_by_their_media_type() {
        for ctype in [
            "application/vnd.ogc.se_xml",
            "application/vnd.ogc.se_xml; charset=UTF-8",
            "Application/VND.OGC.SE_XML",
            "application/vnd.ogc.se+xml",
        ] {
            assert!(
                is_service_exception(&resp(200, Some(ctype)), || false),
                "{ctype}"
            );
        }
        // XML is a report only when a map or a tile was asked for (GetCapabilities and
        // GetFeatureInfo answer XML).
        for ctype in ["text/xml", "text/xml;charset=utf-8", "application/xml"] {
            assert!(
                is_service_exception(&resp(200, Some(ctype)), || true),
                "{ctype}"
            );
            assert!(
                !is_service_exception(&resp(200, Some(ctype)), || false),
                "{ctype}"
            );
        }
        for ctype in [None, Some("image/png"), Some("application/vnd.ogc.wms_xml")] {
            assert!(
                !is_service_exception(&resp(200, ctype), || true),
                "{ctype:?}"
            );
        }
        // An error status is judged by its status, as before.
        assert!(!is_service_exception(
            &resp(500, Some("application/vnd.ogc.se_xml")),
            || true
        ));
    }

    #[test]
    fn map_requests_by_their_request_parameter() {
        for q in [
            "SERVICE=WMS&REQUEST=GetMap&LAYERS=roads",
            "service=wms&request=getmap",
            "Service=WMTS&Request=GetTile&TileMatrix=3",
        ] {
            assert!(is_map_request(Some(q)), "{q}");
        }
        for q in [
            "SERVICE=WMS&REQUEST=GetCapabilities",
            "REQUEST=GetFeatureInfo",
            "REQUESTS=GetMap",
            "request",
            "",
        ] {
            assert!(!is_map_request(Some(q)), "{q}");
        }
        assert!(!is_map_request(None));
    }
}
