//! A tenant: an account of a test instance with its own client certificate,
//! driving the Docker API over TLS with the real docker CLI, exactly as
//! `DOCKER_HOST=tcp://… DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=…` users do.

use std::path::Path;
use std::process::{Command, Output};

use crate::instance::{DOCKER_TIMEOUT, docker_cli, expect_success, run_with_timeout};

pub struct Tenant {
    pub name: String,
    host: String,
    certs: tempfile::TempDir,
    docker_config: tempfile::TempDir,
}

impl Tenant {
    /// A tenant of the API at `tls_address`; its certificate goes to [`Tenant::cert_dir`].
    pub fn new(name: &str, tls_address: &str) -> Tenant {
        Tenant {
            name: name.to_string(),
            host: format!("tcp://{tls_address}"),
            certs: tempfile::Builder::new()
                .prefix("atoll-certs-")
                .tempdir()
                .unwrap_or_else(|e| panic!("creating a cert dir: {e}")),
            docker_config: tempfile::Builder::new()
                .prefix("atoll-docker-config-")
                .tempdir()
                .unwrap_or_else(|e| panic!("creating a DOCKER_CONFIG dir: {e}")),
        }
    }

    /// Follows the API to a new address (a restarted head picks a new port).
    pub fn set_address(&mut self, tls_address: &str) {
        self.host = format!("tcp://{tls_address}");
    }

    pub fn cert_dir(&self) -> &Path {
        self.certs.path()
    }

    /// `tcp://ADDR:PORT` of the API.
    /// The CLI's configuration directory (`DOCKER_CONFIG`: logins).
    pub fn docker_config_dir(&self) -> &Path {
        self.docker_config.path()
    }

    pub fn docker_host(&self) -> &str {
        &self.host
    }

    /// The environment a user exports.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DOCKER_HOST".into(), self.host.clone()),
            ("DOCKER_TLS_VERIFY".into(), "1".into()),
            (
                "DOCKER_CERT_PATH".into(),
                self.certs.path().to_string_lossy().into_owned(),
            ),
            (
                "DOCKER_CONFIG".into(),
                self.docker_config.path().to_string_lossy().into_owned(),
            ),
        ]
    }

    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.args(args)
            .envs(self.env())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION");
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_stdin(args, None)
    }

    pub fn docker_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        run_with_timeout(self.docker_command(args), input, DOCKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    }

    /// Must succeed; stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        expect_success(args, &self.docker(args))
    }

    /// Must fail; stderr.
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "{}: docker {} succeeded but should have failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
