//! OGC service exceptions. A WMS server that cannot draw a map (its database away, a layer's
//! data missing) answers the GetMap with an XML exception report and status 200: MapServer
//! and GeoServer send `application/vnd.ogc.se_xml` for WMS 1.1.1 and `text/xml` for WMS 1.3.0,
//! the version OpenLayers asks for. A cache that judged it by its status alone would store the
//! report as the tile for everyone until it expired. Such an answer is never stored (and the
//! tile is not remembered as one not to cache: the next miss asks again), and where a stale
//! copy of the tile may stand in for a failure (its stale-if-error window) it answers in the
//! report's place, as for a 5xx; it counts against its url's passive health where the
//! endpoint's `outlierDetection` says `serviceExceptions`. GeoWebCache and MapProxy refuse such
//! answers alike. A map or a tile is asked for by a key-value request (`REQUEST=GetMap`,
//! `GetTile`, `GetLegendGraphic`), or, without a `REQUEST`, by an image `FORMAT` (GeoWebCache's
//! RESTful WMTS) or a path that names an image or a vector tile (RESTful WMTS, TMS, XYZ:
//! `…/3/2/1.png`); MapCache and GeoServer answer such a request they cannot serve with the
//! same XML.

use pingora_http::ResponseHeader;

/// The reason a service exception is not stored.
pub const SERVICE_EXCEPTION: &str = "service exception";

/// The media types that are exception reports whatever was asked (WMS 1.1).
const REPORTS: [&str; 2] = ["application/vnd.ogc.se_xml", "application/vnd.ogc.se+xml"];
/// The media types that are exception reports when a map or a tile was asked for (WMS 1.3.0,
/// WMTS).
const XML: [&str; 2] = ["text/xml", "application/xml"];

/// Whether `resp` is a service exception: a 2xx answer with a body (not a 204 or 205) of an
/// exception report's media type, or an XML one when `map_request` (asked only then) says a
/// map or a tile was asked for.
pub fn is_service_exception(resp: &ResponseHeader, map_request: impl FnOnce() -> bool) -> bool {
    if !resp.status.is_success() || matches!(resp.status.as_u16(), 204 | 205) {
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
/// [`is_map_target`]).
pub fn asks_for_map(x: &crate::pipeline::Exchange) -> bool {
    x.cache.as_ref().is_some_and(|u| u.rule.tiles_only)
        || x.proxy
            .as_ref()
            .is_some_and(|p| is_map_target(p.path.as_bytes()))
}

/// Whether a request target (path and query) asks for a map or a tile: its query's `REQUEST`
/// says so where it has one (see [`query_asks_for_map`]); else an image `FORMAT` in its query
/// or its path (see [`is_tile_path`]) does.
pub fn is_map_target(target: &[u8]) -> bool {
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    query
        .and_then(query_asks_for_map)
        .unwrap_or_else(|| is_tile_path(path))
}

/// What a query says of a map or a tile: by its `REQUEST` parameter, `GetMap`, `GetTile` or
/// `GetLegendGraphic` (an image) or another (a GetCapabilities, a GetFeatureInfo, whatever
/// else it asks; of several, one asking for an image wins; an empty one is none); without
/// one, an image or vector tile `FORMAT` (GeoWebCache's RESTful WMTS asks so) says a map;
/// `None`: it says nothing. Names and values are compared decoded and without case, as a WMS
/// reads them.
pub fn query_asks_for_map(q: &[u8]) -> Option<bool> {
    let mut request: Option<bool> = None;
    let mut image_format = false;
    for part in q.split(|b| *b == b'&') {
        let Some(eq) = memchr::memchr(b'=', part) else {
            continue;
        };
        let (name, value) = (&part[..eq], &part[eq + 1..]);
        if value.is_empty() {
            continue;
        }
        if is(name, &[b"request"]) {
            request = Some(request.unwrap_or(false) || is(value, &IMAGE_REQUESTS));
        } else if is(name, &[b"format"]) {
            image_format |= is_image_format(value);
        }
    }
    request.or(image_format.then_some(true))
}

/// The requests a WMS or WMTS answers with an image.
const IMAGE_REQUESTS: [&[u8]; 3] = [b"GetMap", b"GetTile", b"GetLegendGraphic"];

/// The media types of vector tiles (the images' are `image/…`).
const TILE_FORMATS: [&[u8]; 2] = [
    b"application/vnd.mapbox-vector-tile",
    b"application/x-protobuf",
];

/// Whether a `FORMAT` value, decoded (`+` a space, then `%XX`), is an image's or a vector
/// tile's media type (its parameters, such as `; mode=8bit`, aside). Only its first 256 bytes
/// are looked at: a media type is shorter.
fn is_image_format(raw: &[u8]) -> bool {
    let raw = &raw[..raw.len().min(256)];
    let decoded;
    let value = if memchr::memchr2(b'%', b'+', raw).is_some() {
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        decoded = percent_encoding::percent_decode(&spaced).collect::<Vec<u8>>();
        &decoded[..]
    } else {
        raw
    };
    let media = value
        .iter()
        .position(|b| *b == b';')
        .map_or(value, |end| &value[..end])
        .trim_ascii();
    media.len() > 6 && media[..6].eq_ignore_ascii_case(b"image/")
        || TILE_FORMATS.iter().any(|t| media.eq_ignore_ascii_case(t))
}

/// Whether `raw`, decoded, is one of `words` (without case).
fn is(raw: &[u8], words: &[&[u8]]) -> bool {
    if words.iter().any(|w| raw.eq_ignore_ascii_case(w)) {
        return true;
    }
    // An escaped letter takes three bytes.
    let longest = words.iter().map(|w| w.len()).max().unwrap_or(0);
    if memchr::memchr(b'%', raw).is_none() || raw.len() > 3 * longest {
        return false;
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    words.iter().any(|w| decoded.eq_ignore_ascii_case(w))
}

/// The extensions of the images and tiles a RESTful WMTS, a TMS or an XYZ service serves.
const TILE_EXTENSIONS: [&[u8]; 14] = [
    b"png", b"png8", b"jpg", b"jpeg", b"gif", b"webp", b"avif", b"tif", b"tiff", b"jp2", b"bmp",
    b"pbf", b"mvt", b"terrain",
];

/// Whether a request's path names an image or a tile: its last segment's extension (without
/// case) is one of [`TILE_EXTENSIONS`].
pub fn is_tile_path(path: &[u8]) -> bool {
    let last = memchr::memrchr(b'/', path).map_or(path, |slash| &path[slash + 1..]);
    memchr::memrchr(b'.', last).is_some_and(|dot| {
        let ext = &last[dot + 1..];
        TILE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e))
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
        // An answer without a body is no report.
        for status in [204, 205] {
            assert!(!is_service_exception(
                &resp(status, Some("text/xml")),
                || true
            ));
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
            "SERVICE=WMS&REQUEST=GetLegendGraphic&LAYER=roads",
            "REQUEST=%47%65%74%4c%65%67%65%6e%64%47%72%61%70%68%69%63",
            "REQUEST=GetMap",
            "a=1&REQUEST=GETMAP&b",
            "SERVICE=WMS&%52EQUEST=GetMap",
            "re%71uest=Get%4Dap",
            "REQUEST=%47%65%74%54%69%6c%65",
            "REQUEST=GetCapabilities&REQUEST=GetMap",
        ] {
            assert_eq!(query_asks_for_map(q.as_bytes()), Some(true), "{q}");
        }
        // A GetFeatureInfo carries the GetMap's FORMAT: its REQUEST decides.
        for q in [
            "SERVICE=WMS&REQUEST=GetCapabilities",
            "REQUEST=GetFeatureInfo&FORMAT=image/png&INFO_FORMAT=text/xml",
            "REQUEST=Get%",
            "REQUEST=Get%4",
        ] {
            assert_eq!(query_asks_for_map(q.as_bytes()), Some(false), "{q}");
        }
        // Without a REQUEST, an image or vector tile FORMAT asks for a map (a long value's
        // first bytes say so).
        let long = format!("format=image%2Fpng%3B{}", "x".repeat(400));
        assert_eq!(query_asks_for_map(long.as_bytes()), Some(true));
        for q in [
            "format=image/png",
            "FORMAT=image%2Fpng",
            "format=image/png;%20mode=8bit",
            "format=image/png;+mode=8bit",
            "format=application/vnd.mapbox-vector-tile",
            "Format=Application%2Fx-protobuf",
        ] {
            assert_eq!(query_asks_for_map(q.as_bytes()), Some(true), "{q}");
        }
        for q in [
            "REQUESTS=GetMap",
            "request",
            "xrequest=GetMap",
            "a=request=GetMap",
            "format=application/json",
            "format=image/",
            "formats=image/png",
            "REQUEST=",
            "REQUEST=&format=",
            "format=image%2Bpng",
            "",
        ] {
            assert_eq!(query_asks_for_map(q.as_bytes()), None, "{q}");
        }
    }

    #[test]
    fn map_targets_by_query_then_path() {
        for t in [
            "/wms?REQUEST=GetMap",
            "/wmts/roads/default/grid/3/2/1.png",
            "/gwc/service/wmts/rest/ws:roads/default/EPSG:900913/EPSG:900913:3/1/7?format=image/png",
            "/tiles/3/2/1.pbf?token=x",
            "/tiles/3/2/1.png?request=",
        ] {
            assert!(is_map_target(t.as_bytes()), "{t}");
        }
        for t in [
            "/wms?REQUEST=GetFeatureInfo",
            "/legend.png?REQUEST=GetCapabilities",
            "/wmts/1.0.0/WMTSCapabilities.xml",
            "/tiles/3/2/1",
        ] {
            assert!(!is_map_target(t.as_bytes()), "{t}");
        }
    }

    #[test]
    fn tile_paths_by_their_extension() {
        for p in [
            "/wmts/roads/default/WebMercatorQuad/3/2/1.png",
            "/tms/1.0.0/roads/3/2/1.JPEG",
            "/tiles/3/2/1.pbf",
            "/terrain/3/2/1.terrain",
            "1.webp",
        ] {
            assert!(is_tile_path(p.as_bytes()), "{p}");
        }
        for p in [
            "/wmts/1.0.0/WMTSCapabilities.xml",
            "/wms",
            "/tiles.png/3/2/1",
            "/tiles/3/2/1",
            "/tiles/3/2/1.",
            "/tiles/3/2/png",
            "",
        ] {
            assert!(!is_tile_path(p.as_bytes()), "{p}");
        }
    }
}
