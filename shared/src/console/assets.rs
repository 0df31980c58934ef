//! The console's stylesheet and script, embedded in the binary and served under names that
//! carry a digest of their content, so browsers may cache them forever and never see a stale one.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    name: String,
    body: &'static str,
    content_type: &'static str,
}

fn asset(stem: &str, ext: &str, body: &'static str, content_type: &'static str) -> Asset {
    let d = crate::auth::to_hex(&Sha256::digest(body.as_bytes()));
    Asset {
        name: format!("{stem}-{}.{ext}", &d[..12]),
        body,
        content_type,
    }
}

static CSS: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        "console",
        "css",
        include_str!("../../assets/console.css"),
        "text/css; charset=utf-8",
    )
});
static JS: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        "console",
        "js",
        include_str!("../../assets/console.js"),
        "text/javascript; charset=utf-8",
    )
});

/// The stylesheet's URL path.
pub fn css_path() -> String {
    format!("/console/assets/{}", CSS.name)
}

/// The script's URL path.
pub fn js_path() -> String {
    format!("/console/assets/{}", JS.name)
}

/// `GET /console/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    for a in [&*CSS, &*JS] {
        if a.name == name {
            return (
                [
                    (header::CONTENT_TYPE, a.content_type),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                a.body,
            )
                .into_response();
        }
    }
    (StatusCode::NOT_FOUND, "no such asset").into_response()
}
