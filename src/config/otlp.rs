//! `telemetry.otlp_endpoint`: where the relay's spans go, parsed when the config is loaded (so
//! a wrong one is a configuration error) and used by `spans` to export.

/// Where spans go: `http://host:port` (traces go to `/v1/traces` there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) authority: String,
    pub(crate) path: String,
}

/// `telemetry.otlp_endpoint` parsed; `Err` says what is wrong.
pub(crate) fn endpoint(text: &str) -> Result<Option<Endpoint>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(format!(
            "telemetry.otlp_endpoint {text:?}: only http:// is supported (OTLP/HTTP); send to a \
             collector next to the relay (an agent or sidecar), which can forward over TLS"
        ));
    };
    let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!("telemetry.otlp_endpoint {text:?}: expected http://host:port"));
    }
    let base = base.trim_end_matches('/');
    let path = if base.is_empty() { "/v1/traces".into() } else { format!("/{base}/v1/traces") };
    Ok(Some(Endpoint { authority: authority.into(), path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_host_port_with_an_optional_base_path() {
        assert_eq!(endpoint("").unwrap(), None);
        let plain = endpoint("http://127.0.0.1:4318").unwrap().unwrap();
        assert_eq!(
            (plain.authority.as_str(), plain.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        let based = endpoint("http://otel:4318/otlp/").unwrap().unwrap();
        assert_eq!(based.path, "/otlp/v1/traces");
        assert!(endpoint("https://otel:4318").unwrap_err().contains("only http://"));
        assert!(endpoint("http://otel").unwrap_err().contains("host:port"));
    }
}
