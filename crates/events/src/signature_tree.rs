//! Batch signatures (SPEC §3.2, `SIGNATURE_SCOPE=batch`): the entries one statement writes
//! are signed once, as the leaves of a hash tree, instead of one signature each. Each entry
//! carries the path from its leaf to the root (`signature_proof`), and the one signature is
//! over the root, so an entry still stands or falls on its own: changing any signed field
//! changes its leaf, and no path leads from a changed leaf to a signed root unless SHA-256
//! has a second preimage. A consumer verifies each root once, however many entries of a
//! batch it reads.
//!
//! The tree: a leaf is `SHA-256(0x00 ‖ signed bytes)` (the entry's canonical encoding,
//! `signing.rs`), a node `SHA-256(0x01 ‖ left ‖ right)` (RFC 6962's prefixes: a leaf can
//! never pass for a node). Each level pairs its nodes left to right; an odd last one goes
//! up unpaired. A proof is the siblings from the leaf up, each a side byte (`L`: the
//! sibling is on the left, `R`: on the right) and its 32 bytes, in base64. A tree has at
//! most [`LEAVES_PER_TREE`] leaves, so a proof has at most five steps (220 characters).

use ring::digest::{Context, SHA256};

/// A node's hash.
pub(crate) type Hash = [u8; 32];

/// At most this many entries share one signature (a statement writing more signs one tree
/// per 32): a proof stays at five steps, and one bad entry costs its tree's neighbours no
/// more than a check each.
pub const LEAVES_PER_TREE: usize = 32;

/// A proof of more steps than this is malformed, whoever made it: a reader's work per entry
/// stays bounded.
const MAX_STEPS: usize = 16;

/// One step up from a node: its sibling, and which side the sibling is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Left(Hash),
    Right(Hash),
}

const STEP_LEN: usize = 1 + 32;

fn hash(prefix: u8, parts: &[&[u8]]) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[prefix]);
    for part in parts {
        context.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The leaf of an entry whose canonical encoding is `signed_bytes`.
pub(crate) fn leaf(signed_bytes: &[u8]) -> Hash {
    hash(0x00, &[signed_bytes])
}

fn node(left: &Hash, right: &Hash) -> Hash {
    hash(0x01, &[left, right])
}

/// The root over `leaves` (at least one), and each leaf's proof, in order.
pub(crate) fn build(leaves: &[Hash]) -> (Hash, Vec<Vec<Step>>) {
    let mut proofs = vec![Vec::new(); leaves.len()];
    // Each node of the current level, with the leaves under it.
    let mut level: Vec<(Hash, Vec<usize>)> = leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| (*leaf, vec![i]))
        .collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut nodes = level.into_iter();
        while let Some((left, mut under)) = nodes.next() {
            let Some((right, right_under)) = nodes.next() else {
                next.push((left, under));
                break;
            };
            for &i in &under {
                proofs[i].push(Step::Right(right));
            }
            for &i in &right_under {
                proofs[i].push(Step::Left(left));
            }
            under.extend(right_under);
            next.push((node(&left, &right), under));
        }
        level = next;
    }
    (level[0].0, proofs)
}

/// The root that `leaf` and its `proof` lead to.
pub(crate) fn root(leaf: Hash, proof: &[Step]) -> Hash {
    proof.iter().fold(leaf, |at, step| match step {
        Step::Left(sibling) => node(sibling, &at),
        Step::Right(sibling) => node(&at, sibling),
    })
}

/// A proof as the `signature_proof` field carries it (before base64).
pub(crate) fn encode(proof: &[Step]) -> Vec<u8> {
    let mut out = Vec::with_capacity(proof.len() * STEP_LEN);
    for step in proof {
        let (side, sibling) = match step {
            Step::Left(sibling) => (b'L', sibling),
            Step::Right(sibling) => (b'R', sibling),
        };
        out.push(side);
        out.extend_from_slice(sibling);
    }
    out
}

/// The proof in `bytes`, or why it is none.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Step>, String> {
    if !bytes.len().is_multiple_of(STEP_LEN) || bytes.len() / STEP_LEN > MAX_STEPS {
        return Err(format!(
            "a proof is up to {MAX_STEPS} steps of {STEP_LEN} bytes, not {} bytes",
            bytes.len()
        ));
    }
    bytes
        .chunks(STEP_LEN)
        .map(|step| {
            let mut sibling = [0; 32];
            sibling.copy_from_slice(&step[1..]);
            match step[0] {
                b'L' => Ok(Step::Left(sibling)),
                b'R' => Ok(Step::Right(sibling)),
                side => Err(format!(
                    "a proof step's side is `L` or `R`, not {side:#04x}"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn every_leaf_s_proof_leads_to_the_root_and_no_other_leaf_s_does() {
        for n in [1, 2, 3, 5, 8, 13, LEAVES_PER_TREE] {
            let leaves = leaves(n);
            let (top, proofs) = build(&leaves);
            for (i, proof) in proofs.iter().enumerate() {
                assert_eq!(root(leaves[i], proof), top, "leaf {i} of {n}");
                assert!(proof.len() <= 5, "leaf {i} of {n}: {} steps", proof.len());
                let other = leaves[(i + 1) % n];
                if n > 1 {
                    assert_ne!(root(other, proof), top, "leaf {i}'s proof, another leaf");
                }
                assert_eq!(decode(&encode(proof)), Ok(proof.clone()));
            }
        }
        assert_eq!(
            build(&leaves(1)).0,
            leaves(1)[0],
            "one leaf is its own root"
        );
    }

    #[test]
    fn a_leaf_cannot_pass_for_a_node() {
        let leaves = leaves(2);
        let (top, _) = build(&leaves);
        let mut joined = leaves[0].to_vec();
        joined.extend_from_slice(&leaves[1]);
        assert_ne!(leaf(&joined), top);
    }

    #[test]
    fn a_malformed_proof_is_an_error_not_a_panic() {
        assert!(decode(&[b'L'; 32]).is_err(), "not whole steps");
        assert!(decode(&[b'X'; STEP_LEN]).is_err(), "not a side");
        assert!(
            decode(&vec![b'L'; STEP_LEN * (MAX_STEPS + 1)]).is_err(),
            "too long"
        );
        assert_eq!(decode(&[]), Ok(Vec::new()));
    }
}
