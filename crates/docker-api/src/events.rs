//! `GET /events`: the caller's events as a JSON stream, with Docker's
//! `since`/`until` and filters (container, event, image, label, type, volume).

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::Response;
use chrono::{DateTime, Utc};
use cluster::events::Event;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::params::{Filters, Params};
use crate::{Account, AppState};

/// Docker's time arguments: unix seconds with an optional fraction, or RFC 3339.
/// Nanoseconds since the epoch.
fn parse_time(s: &str) -> ApiResult<i64> {
    let bad = || {
        ApiError::bad(format!(
            "failed to parse value as time or duration: \"{s}\""
        ))
    };
    if let Some((secs, frac)) = s.split_once('.') {
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        let frac = format!("{frac:0<9}");
        let nanos: i64 = frac.get(..9).ok_or_else(bad)?.parse().map_err(|_| bad())?;
        return Ok(secs * 1_000_000_000 + nanos);
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1_000_000_000);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc).timestamp_nanos_opt().unwrap_or(0))
        .map_err(|_| bad())
}

/// Docker's event object.
fn event_json(e: &Event) -> Value {
    let mut v = json!({
        "Type": e.typ,
        "Action": e.action,
        "Actor": {"ID": e.id, "Attributes": e.attributes},
        "scope": "local",
        "time": e.time_nano / 1_000_000_000,
        "timeNano": e.time_nano,
    });
    // The pre-1.22 fields, still sent for containers and images.
    if e.typ == "container" || e.typ == "image" {
        v["status"] = json!(e.action);
        v["id"] = json!(e.id);
        if let Some(image) = e.attributes.get("image") {
            v["from"] = json!(image);
        }
    }
    v
}

/// Whether `e` passes the filters (each key: any of its values).
fn matches(f: &Filters, e: &Event) -> bool {
    let any = |key: &str, test: &dyn Fn(&str) -> bool| {
        f.get(key)
            .is_none_or(|vals| vals.iter().any(|v| test(v.as_str())))
    };
    let attr = |k: &str| e.attributes.get(k).map(String::as_str).unwrap_or("");
    any("type", &|t| t == e.typ)
        && any("event", &|a| {
            a == e.action || e.action.split_once(':').is_some_and(|(p, _)| p == a)
        })
        && any("container", &|c| {
            e.typ == "container" && (e.id.starts_with(c) || attr("name") == c)
        })
        && any("image", &|i| {
            attr("image") == i
                || (e.typ == "image" && (e.id == i || attr("name") == i || e.id.starts_with(i)))
        })
        && any("volume", &|v| e.typ == "volume" && e.id == v)
        && any("label", &|l| match l.split_once('=') {
            Some((k, v)) => e.attributes.get(k).is_some_and(|x| x == v),
            None => e.attributes.contains_key(l),
        })
}

pub async fn events(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let f = p.filters()?;
    f.only(&[
        "container",
        "event",
        "image",
        "label",
        "type",
        "volume",
        "network",
        "daemon",
        "plugin",
        "node",
        "service",
        "secret",
        "config",
        "scope",
    ])?;
    let now = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let since = p
        .get("since")
        .filter(|s| !s.is_empty())
        .map(parse_time)
        .transpose()?;
    let until = p
        .get("until")
        .filter(|s| !s.is_empty())
        .map(parse_time)
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(ApiError::bad("`since` time must be before `until` time"));
    }
    let account = acct.0.clone();
    let (past, rx) = st.cluster.events().subscribe(&account, since);
    let past: Vec<Event> = past
        .into_iter()
        .filter(|e| until.is_none_or(|u| e.time_nano <= u) && matches(&f, e))
        .collect();
    let encode = |e: &Event| {
        let mut b = serde_json::to_vec(&event_json(e)).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(b))
    };
    let history = futures::stream::iter(past.iter().map(encode).collect::<Vec<_>>());
    let response = |body: Body| {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .unwrap_or_default()
    };
    // An `until` in the past: only what was kept.
    if until.is_some_and(|u| u <= now) {
        return Ok(response(Body::from_stream(history)));
    }
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| {
        let keep = match &r {
            Ok(e) => e.account == account && matches(&f, e),
            // Lagged: some events were missed; keep streaming.
            Err(_) => false,
        };
        let item = r.ok().filter(|_| keep).map(|e| encode(&e));
        async move { item }
    });
    let live: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match until {
        Some(u) => {
            let wait = std::time::Duration::from_nanos((u - now).max(0) as u64);
            Box::pin(live.take_until(tokio::time::sleep(wait)))
        }
        None => Box::pin(live),
    };
    Ok(response(Body::from_stream(history.chain(live))))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ev(typ: &'static str, action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            account: "a".into(),
            typ,
            action: action.into(),
            id: id.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            time_nano: 1,
        }
    }

    fn f(q: &str) -> Filters {
        Filters::parse(q).unwrap()
    }

    #[test]
    fn filters_match_like_docker() {
        let start = ev(
            "container",
            "start",
            "abcdef",
            &[("name", "web"), ("image", "busybox"), ("team", "x")],
        );
        let exec = ev(
            "container",
            "exec_create: sh -c ls",
            "abcdef",
            &[("name", "web")],
        );
        assert!(matches(&f(r#"{"container":["web"]}"#), &start));
        assert!(matches(&f(r#"{"container":["abc"]}"#), &start));
        assert!(!matches(&f(r#"{"container":["db"]}"#), &start));
        assert!(matches(&f(r#"{"event":["start","die"]}"#), &start));
        assert!(matches(&f(r#"{"event":["exec_create"]}"#), &exec));
        assert!(matches(&f(r#"{"image":["busybox"]}"#), &start));
        assert!(matches(&f(r#"{"label":["team=x"]}"#), &start));
        assert!(!matches(&f(r#"{"label":["team=y"]}"#), &start));
        assert!(!matches(&f(r#"{"type":["image"]}"#), &start));
        let v = event_json(&start);
        assert_eq!(v["status"], "start");
        assert_eq!(v["from"], "busybox");
        assert_eq!(v["Actor"]["Attributes"]["name"], "web");
    }

    #[test]
    fn times_parse_as_the_cli_sends_them() {
        assert_eq!(parse_time("10").unwrap(), 10_000_000_000);
        assert_eq!(parse_time("10.5").unwrap(), 10_500_000_000);
        assert_eq!(
            parse_time("1700000000.000000001").unwrap(),
            1_700_000_000_000_000_001
        );
        assert!(parse_time("2024-01-01T00:00:00Z").is_ok());
        assert!(parse_time("soon").is_err());
    }
}
