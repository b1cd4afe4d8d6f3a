"""pytest fixtures for the docker-py tests (helpers live in atoll_harness.py).

- `atoll`: one `atoll up` for the whole session, with busybox:latest loaded.
- `client`: that instance's docker.DockerClient.
- `fresh_atoll`: a new instance for one test (with busybox:latest loaded), for tests
  that restart it or need an empty state.
- `test_images`: paths and facts of the locally built test images.

The binary is $ATOLL_BIN or the newer of target/{release,debug}/atoll; the images are
$ATOLL_TEST_IMAGES or built by `cargo run -p testkit --bin make-test-images`. On a
failure the tail of atoll's log is printed.
"""
import pytest

from atoll_harness import Atoll, TestImages, test_images_dir


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed:
        item.session.stash.setdefault(_FAILED, True)
        item.stash[_ITEM_FAILED] = True
    return rep


_FAILED = pytest.StashKey[bool]()
_ITEM_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def test_images():
    return TestImages(test_images_dir())


@pytest.fixture(scope="session")
def atoll(request, test_images):
    inst = Atoll()
    try:
        inst.load(test_images.busybox["path"])
        yield inst
    finally:
        inst.close(failed=request.session.stash.get(_FAILED, False))


@pytest.fixture
def client(atoll):
    return atoll.client


@pytest.fixture
def fresh_atoll(request, test_images):
    inst = Atoll()
    try:
        inst.load(test_images.busybox["path"])
        yield inst
    finally:
        inst.close(failed=request.node.stash.get(_ITEM_FAILED, False))
