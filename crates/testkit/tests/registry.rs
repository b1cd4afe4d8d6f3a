//! The test registry starts, accepts pushes of both archive layouts, and serves them.

use testkit::http::Request;
use testkit::{Registry, test_images};

#[test]
fn pushes_archives_and_serves_them() {
    let imgs = test_images();
    let reg = Registry::start();
    assert_eq!(reg.addr(), format!("127.0.0.1:{}", reg.port()));

    let r = reg.push_archive(&imgs.busybox.path, "test/busybox:latest");
    assert_eq!(r, format!("{}/test/busybox:latest", reg.addr()));
    let tags = reg.get("/v2/test/busybox/tags/list").unwrap();
    assert_eq!(tags.status, 200, "{}", tags.text());
    let tags = tags.json().unwrap();
    assert_eq!(tags["name"], "test/busybox");
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));

    // The pushed manifest points at the same config, so pulls get the same image id.
    let m = reg
        .request(&Request {
            method: "GET",
            path: "/v2/test/busybox/manifests/latest",
            headers: &[(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            )],
            body: None,
        })
        .unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    let manifest = m.json().unwrap();
    assert_eq!(manifest["config"]["digest"], imgs.busybox.id.as_str());
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = reg.get(&format!("/v2/test/busybox/blobs/{layer}")).unwrap();
    assert_eq!(blob.status, 200);

    // The OCI layout archive and a multi-layer image push too.
    reg.push_archive(&imgs.busybox_oci.path, "test/oci:v1");
    reg.push_archive(&imgs.multilayer.path, "test/multilayer:latest");
    let tags = reg.get("/v2/test/oci/tags/list").unwrap().json().unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    let ml = reg
        .request(&Request {
            method: "GET",
            path: "/v2/test/multilayer/manifests/latest",
            headers: &[(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )],
            body: None,
        })
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ml["layers"].as_array().unwrap().len(), 3);
    assert_eq!(ml["config"]["digest"], imgs.multilayer.id.as_str());

    let missing = reg.get("/v2/test/nothing/tags/list").unwrap();
    assert_eq!(missing.status, 404);
}

#[test]
fn registry_stops_on_drop() {
    let reg = Registry::start();
    let addr = reg.addr();
    drop(reg);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening on {addr}"
    );
}
