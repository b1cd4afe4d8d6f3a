//! Builds the test images (once per machine) and prints their directory, for test
//! harnesses outside Rust (`scripts/test.sh` exports it as `ATOLL_TEST_IMAGES`).

fn main() {
    let images = testkit::test_images();
    println!("{}", images.dir.display());
}
