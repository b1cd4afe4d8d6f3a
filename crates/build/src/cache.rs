//! Cache keys of build steps. A step is reused when its key matches: the
//! parent image, the instruction as it will run (arguments in effect
//! included), and what it reads (the checksum of copied files).

use sha2::{Digest as _, Sha256};

/// The key of a step on top of `parent` (an image id).
pub fn step_key(parent: &str, description: &str, inputs: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"atoll-build-v1");
    // Length-prefixed, so no two lists of strings hash alike.
    for part in [parent, description]
        .into_iter()
        .chain(inputs.iter().copied())
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_parents_instructions_and_inputs() {
        let k = step_key("sha256:a", "RUN x", &["1"]);
        assert_eq!(k, step_key("sha256:a", "RUN x", &["1"]));
        assert_ne!(k, step_key("sha256:b", "RUN x", &["1"]));
        assert_ne!(k, step_key("sha256:a", "RUN y", &["1"]));
        assert_ne!(k, step_key("sha256:a", "RUN x", &["2"]));
        assert_ne!(step_key("a", "b\0c", &[]), step_key("a", "b", &["c"]));
    }
}
