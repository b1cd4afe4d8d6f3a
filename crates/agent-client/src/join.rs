//! An agent joining the datacenter: the client side of the head's join routes.
//!
//! 1. Fetch the CA certificate over TLS without trusting anything yet, and check
//!    it against the fingerprint in the token: a head that is not the one the
//!    operator meant fails here, before the secret is sent.
//! 2. Make a key, send a signing request with the token over TLS verified by
//!    that CA, and get back a certificate naming this server.

use http::Method;

use crate::client::{AgentAddr, AgentClient, ClientError, empty, json_body};
use crate::types::{CaResponse, JoinRequest, JoinResponse};

/// Joins server `name`, whose agent will listen at `address` (`tcp://…`), to the
/// datacenter whose head's cluster port is `head` (`HOST:PORT`).
pub async fn join(
    head: &str,
    token: &str,
    name: &str,
    address: &str,
) -> Result<pki::Credentials, ClientError> {
    let bad = |e: pki::PkiError| ClientError::Protocol(e.to_string());
    let parsed = pki::JoinToken::parse(token).map_err(bad)?;
    let addr = AgentAddr::Tcp(head.trim_start_matches("tcp://").to_string());

    let unverified = AgentClient::new(addr.clone())
        .with_tls(pki::fetch_ca_client_config().map_err(bad)?, pki::HEAD_NAME)?;
    let ca: CaResponse = unverified.call(Method::GET, "/v1/ca", empty()).await?;
    if pki::fingerprint_pem(&ca.ca).map_err(bad)? != parsed.ca_fingerprint {
        return Err(ClientError::Protocol(format!(
            "the head at {head} is not the one this token is for (its CA does not match)"
        )));
    }

    let (key_pem, csr) = pki::key_and_request(name).map_err(bad)?;
    let head = AgentClient::new(addr).with_tls(
        pki::anonymous_client_config(&ca.ca).map_err(bad)?,
        pki::HEAD_NAME,
    )?;
    let answer: JoinResponse = head
        .call(
            Method::POST,
            "/v1/join",
            json_body(&JoinRequest {
                token: token.trim().to_string(),
                name: name.to_string(),
                address: address.to_string(),
                csr,
            }),
        )
        .await?;
    Ok(pki::Credentials {
        ca_pem: ca.ca,
        cert_pem: answer.certificate,
        key_pem,
    })
}
