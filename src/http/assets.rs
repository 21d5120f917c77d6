//! Files the server hands to browsers, embedded in the binary so that a page loads nothing
//! from anywhere else (a machine without internet access gets a working GraphiQL) and
//! `cargo build` needs no Node.
//!
//! Third-party files come from `console/vendor/<package>-<version>/`, which
//! `console/vendor.mjs` copies from the npm packages pinned in `console/package-lock.json`
//! (`scripts/test` checks that they still match). They are served at `/assets/<that path>`:
//! the version is in the path, so browsers may cache them for good.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// One embedded file.
struct Asset {
    /// Under `/assets/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// A file of `console/vendor/`, by its directory (`<package>-<version>`) and name.
macro_rules! vendored {
    ($dir:literal, $file:literal, $content_type:literal) => {
        Asset {
            path: concat!($dir, "/", $file),
            content_type: $content_type,
            body: include_bytes!(concat!("../../console/vendor/", $dir, "/", $file)),
        }
    };
}

/// A file of the console (`console/app/`), served under `/assets/console/`.
macro_rules! console {
    ($file:literal, $content_type:literal) => {
        Asset {
            path: concat!("console/", $file),
            content_type: $content_type,
            body: include_bytes!(concat!("../../console/app/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    vendored!(
        "graphiql-4.1.2",
        "graphiql.min.js",
        "text/javascript; charset=utf-8"
    ),
    vendored!(
        "graphiql-4.1.2",
        "graphiql.min.css",
        "text/css; charset=utf-8"
    ),
    vendored!("graphiql-4.1.2", "LICENSE", "text/plain; charset=utf-8"),
    vendored!(
        "react-18.3.1",
        "react.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    vendored!("react-18.3.1", "LICENSE", "text/plain; charset=utf-8"),
    vendored!(
        "react-dom-18.3.1",
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    vendored!("react-dom-18.3.1", "LICENSE", "text/plain; charset=utf-8"),
    vendored!(
        "graphql-ws-6.4.2",
        "graphql-ws.min.js",
        "text/javascript; charset=utf-8"
    ),
    vendored!(
        "graphql-ws-6.4.2",
        "LICENSE.md",
        "text/plain; charset=utf-8"
    ),
    Asset {
        path: "viewcast/graphiql.js",
        content_type: JS,
        body: include_bytes!("pages/graphiql.js"),
    },
    console!("console.css", "text/css; charset=utf-8"),
    console!("main.js", "text/javascript; charset=utf-8"),
    console!("api.js", "text/javascript; charset=utf-8"),
    console!("sources.js", "text/javascript; charset=utf-8"),
    console!("live.js", "text/javascript; charset=utf-8"),
    console!("filter.js", "text/javascript; charset=utf-8"),
    console!("runs.js", "text/javascript; charset=utf-8"),
    console!("triggers.js", "text/javascript; charset=utf-8"),
];

/// `GET /assets/{*path}`.
pub async fn serve(Path(path): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    // Our own files change with the binary, so they are revalidated; vendored ones carry
    // their version in the path.
    let cache = if asset.path.starts_with("viewcast/") || asset.path.starts_with("console/") {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

/// GraphiQL, for a browser that opens `/graphql`: every file it loads is one of ours.
pub fn graphiql() -> Html<&'static str> {
    Html(include_str!("pages/graphiql.html"))
}

/// `GET /console`: the console's page (its views are in the URL's fragment).
pub async fn console() -> Html<&'static str> {
    Html(include_str!("../../console/app/index.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_a_page_names_is_embedded() {
        for (page, files) in [
            (include_str!("pages/graphiql.html"), 5),
            (include_str!("../../console/app/index.html"), 3),
        ] {
            let named: Vec<&str> = page
                .split("\"/assets/")
                .skip(1)
                .filter_map(|rest| rest.split('"').next())
                .collect();
            assert_eq!(named.len(), files, "{named:?}");
            for path in named {
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "{path} is not embedded"
                );
            }
        }
    }

    #[test]
    fn every_module_the_console_imports_is_embedded() {
        for asset in ASSETS.iter().filter(|a| a.path.starts_with("console/")) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            for import in text.split("from './").skip(1) {
                let file = import.split('\'').next().unwrap_or_default();
                let path = format!("console/{file}");
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "{} imports {path}, which is not embedded",
                    asset.path
                );
            }
        }
    }
}
