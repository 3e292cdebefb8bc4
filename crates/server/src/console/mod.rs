//! The web console (ADR 0034): `/` is its page, `/console/<version>/<file>`
//! its modules, styles and images, all embedded in tetherd. The console
//! talks only to the public API, with the bearer token of a login.
//!
//! Every answer here carries a strict Content-Security-Policy: scripts,
//! styles and connections to this origin only, nothing inline, no frames.

mod assets;

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use assets::{ASSETS, Asset, INDEX_HTML};

/// What a console page may load and where it may connect: this origin only,
/// nothing inline, no plugins, no frames around it.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the console's files are served; the version follows.
const ASSET_PREFIX: &str = "/console";

/// The embedded console, hashed once.
struct Console {
    /// A hash of every file: a new console has new URLs, so its files can
    /// be cached for good.
    version: String,
    index: String,
    files: HashMap<&'static str, (&'static Asset, HeaderValue)>,
}

static CONSOLE: LazyLock<Console> = LazyLock::new(|| {
    let mut whole = Sha256::new();
    let mut files = HashMap::new();
    for asset in ASSETS {
        let digest = Sha256::digest(asset.bytes);
        whole.update(asset.path.as_bytes());
        whole.update(digest);
        let etag = HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12])))
            .unwrap_or_else(|_| HeaderValue::from_static("\"console\""));
        files.insert(asset.path, (asset, etag));
    }
    let version = hex::encode(&whole.finalize()[..8]);
    let index = INDEX_HTML.replace("%CONSOLE%", &format!("{ASSET_PREFIX}/{version}"));
    Console {
        version,
        index,
        files,
    }
});

/// The console's routes, to merge into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/console/{version}/{*path}", axum::routing::get(asset))
        .layer(axum::middleware::map_response(with_security_headers))
}

/// The page: never cached, so a new tetherd's console is loaded at once.
async fn index() -> Response {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        CONSOLE.index.clone(),
    )
        .into_response()
}

/// A file of this console's version: cached for a year (its URL changes
/// with its content), revalidated by its ETag if asked.
async fn asset(Path((version, path)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let found = (version == CONSOLE.version)
        .then(|| CONSOLE.files.get(path.as_str()))
        .flatten();
    let Some((asset, etag)) = found else {
        return (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such console file; reload the page to get this tetherd's console\n",
        )
            .into_response();
    };
    let cache = [
        (ETAG, etag.clone()),
        (
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ),
    ];
    if headers
        .get(IF_NONE_MATCH)
        .is_some_and(|sent| sent.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
        asset.bytes,
    )
        .into_response()
}

async fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_console_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(dir).expect("crates/server/console") {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_string_lossy();
            if name != "index.html" && !CONSOLE.files.contains_key(name.as_ref()) {
                missing.push(name.into_owned());
            }
        }
        assert!(
            missing.is_empty(),
            "add these to ASSETS in console/assets.rs: {missing:?}"
        );
    }

    #[test]
    fn the_page_loads_this_versions_files_and_nothing_inline() {
        let index = &CONSOLE.index;
        assert!(index.contains(&format!("/console/{}/app.js", CONSOLE.version)));
        assert!(!index.contains("%CONSOLE%"));
        assert!(
            !index.contains("style="),
            "no inline style: the CSP refuses it"
        );
        assert_eq!(
            index.matches("<script").count(),
            1,
            "one module, no inline script"
        );
    }

    #[test]
    fn no_console_file_builds_markup_from_text_or_evaluates_it() {
        for asset in ASSETS.iter().filter(|asset| asset.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.bytes).expect("UTF-8");
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "eval(",
                "new Function",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", asset.path);
            }
        }
    }
}
