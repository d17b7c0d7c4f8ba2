//! ROUGE-L as pycocoevalcap's `Rouge` computes it: per image, the longest
//! common subsequence with each reference, the best precision and the best
//! recall (each maximised separately), F-measure with β = 1.2; the mean over
//! images. Captions are split on single spaces, so an empty caption is one
//! empty token, as in the reference.

const BETA: f64 = 1.2;

fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y { diagonal + 1 } else { above.max(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

pub fn rouge_l(hypothesis: &str, references: &[String]) -> f64 {
    let hyp: Vec<&str> = hypothesis.split(' ').collect();
    let (mut precision, mut recall) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for reference in references {
        let r: Vec<&str> = reference.split(' ').collect();
        let common = lcs(&r, &hyp) as f64;
        precision = precision.max(common / hyp.len() as f64);
        recall = recall.max(common / r.len() as f64);
    }
    if precision != 0.0 && recall != 0.0 {
        let b2 = BETA * BETA;
        ((1.0 + b2) * precision * recall) / (recall + b2 * precision)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_counts_the_longest_common_subsequence() {
        assert_eq!(lcs(&["a", "b", "c", "d"], &["a", "c", "d", "x"]), 3);
        assert_eq!(lcs(&[""], &["a"]), 0);
    }

    #[test]
    fn empty_captions_follow_the_reference() {
        assert_eq!(rouge_l("", &["a dog".to_string()]), 0.0);
        // "" split on spaces is one empty token, which matches an empty reference.
        assert_eq!(rouge_l("", &[String::new()]), 1.0);
    }
}
