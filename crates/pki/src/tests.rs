use super::*;

fn ca() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), "test").unwrap();
    (dir, ca)
}

#[test]
fn the_ca_is_created_once_and_reloaded() {
    let (dir, ca) = ca();
    let again = Ca::load_or_create(dir.path(), "test").unwrap();
    assert_eq!(ca.cert_pem(), again.cert_pem());
    assert_eq!(ca.fingerprint(), again.fingerprint());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn issued_certificates_name_their_holder() {
    let (_d, ca) = ca();
    let creds = ca
        .issue_with_key(Role::Operator, "ops", &[HEAD_NAME.to_string()])
        .unwrap();
    let id = creds.identity().unwrap();
    assert_eq!(id.role, Role::Operator);
    assert_eq!(id.name, "ops");
    assert_eq!(id.serial.len(), 32);
    let other = ca.issue_with_key(Role::Operator, "ops", &[]).unwrap();
    assert_ne!(other.identity().unwrap().serial, id.serial);
}

#[test]
fn a_request_gives_only_its_key() {
    let (_d, ca) = ca();
    let (key, csr) = key_and_request("evil").unwrap();
    let cert = ca
        .sign_request(&csr, Role::Agent, "node-1", &[agent_dns_name("node-1")])
        .unwrap();
    let creds = Credentials {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: cert,
        key_pem: key,
    };
    let id = creds.identity().unwrap();
    assert_eq!((id.role, id.name.as_str()), (Role::Agent, "node-1"));
    assert!(
        client_config(&creds).is_ok(),
        "the key matches the certificate"
    );
    assert!(matches!(
        ca.sign_request("junk", Role::Agent, "x", &[]),
        Err(PkiError::Invalid(_))
    ));
}

#[test]
fn bad_names_are_refused() {
    let (_d, ca) = ca();
    for name in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
        assert!(
            ca.issue_with_key(Role::Account, name, &[]).is_err(),
            "{name:?}"
        );
    }
}

#[test]
fn foreign_certificates_have_no_identity() {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    assert_eq!(identify(cert.der()), None);
    assert_eq!(identify(b"not der"), None);
}

#[test]
fn credentials_round_trip_through_a_directory() {
    let (_d, ca) = ca();
    let creds = ca.issue_with_key(Role::Head, "head", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(Credentials::load(dir.path()).unwrap().is_none());
    creds.save(dir.path()).unwrap();
    let back = Credentials::load(dir.path()).unwrap().unwrap();
    assert_eq!(back.cert_pem, creds.cert_pem);
    assert_eq!(back.key_pem, creds.key_pem);
}

#[test]
fn tokens_parse_back_and_refuse_garbage() {
    let t = JoinToken::generate(&"ab".repeat(32));
    let s = t.to_string();
    assert!(s.starts_with("ATL1."));
    assert_eq!(JoinToken::parse(&s).unwrap(), t);
    assert_eq!(t.secret_hash().len(), 64);
    assert_ne!(t.secret_hash(), t.secret);
    for bad in [
        "",
        "ATL1",
        "ATL1.x.y",
        &format!("ATL2.{}.{}", t.ca_fingerprint, t.secret),
        &format!("{s}.x"),
    ] {
        assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
    }
}

/// A real handshake in memory: the server requires a client certificate from
/// the CA; one from another CA is refused.
#[test]
fn mutual_tls_accepts_the_cluster_and_refuses_strangers() {
    let (_d, ca) = ca();
    let server = ca
        .issue_with_key(Role::Agent, "node-1", &[agent_dns_name("node-1")])
        .unwrap();
    let head = ca
        .issue_with_key(Role::Head, "head", &[HEAD_NAME.into()])
        .unwrap();
    let (_d2, other_ca) = self::ca();
    let stranger = other_ca.issue_with_key(Role::Head, "head", &[]).unwrap();
    let scfg = server_config(&server, ClientAuth::Required).unwrap();
    let name = rustls_pki_types::ServerName::try_from(agent_dns_name("node-1")).unwrap();

    let ok = handshake(client_config(&head).unwrap(), scfg.clone(), name.clone());
    let peer = ok.expect("the head is accepted");
    assert_eq!(identify(&peer).unwrap().role, Role::Head);
    // A stranger's client certificate, with the stranger trusting our CA.
    let mut s2 = stranger.clone();
    s2.ca_pem = ca.cert_pem().to_string();
    assert!(handshake(client_config(&s2).unwrap(), scfg.clone(), name.clone()).is_err());
    // No client certificate at all.
    assert!(
        handshake(
            anonymous_client_config(ca.cert_pem()).unwrap(),
            scfg.clone(),
            name.clone()
        )
        .is_err()
    );
    // The wrong server name.
    let wrong = rustls_pki_types::ServerName::try_from(agent_dns_name("node-2")).unwrap();
    assert!(handshake(client_config(&head).unwrap(), scfg, wrong).is_err());
}

/// Runs a handshake between the two configurations; the client certificate the
/// server saw.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: rustls_pki_types::ServerName<'static>,
) -> Result<Vec<u8>, rustls::Error> {
    let mut c = rustls::ClientConnection::new(client, name)?;
    let mut s = rustls::ServerConnection::new(server)?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s
                .peer_certificates()
                .map(|p| p[0].to_vec())
                .unwrap_or_default());
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

/// An account's certificate past its end is refused at the handshake.
#[test]
fn an_expired_certificate_is_refused_at_the_handshake() {
    let (_d, ca) = ca();
    let server = ca
        .issue_with_key(Role::Agent, "node-1", &[agent_dns_name("node-1")])
        .unwrap();
    let scfg = server_config(&server, ClientAuth::Required).unwrap();
    let name = rustls_pki_types::ServerName::try_from(agent_dns_name("node-1")).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = subject(Role::Account, "alice");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let expired = Credentials {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: params.signed_by(&key, &ca.issuer).unwrap().pem(),
        key_pem: key.serialize_pem(),
    };
    let err = handshake(client_config(&expired).unwrap(), scfg.clone(), name.clone())
        .expect_err("an expired certificate was accepted");
    assert!(err.to_string().contains("expired"), "{err}");
    // The same holder with a current certificate gets in.
    let current = ca.issue_with_key(Role::Account, "alice", &[]).unwrap();
    assert!(handshake(client_config(&current).unwrap(), scfg, name).is_ok());
}
