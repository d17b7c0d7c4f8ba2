//! The fairseq dictionary as OFA builds it (spec §3): four specials, the
//! symbols of `dict.txt` in file order, `<mask>`, `<code_i>`, `<bin_i>`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// Symbol ↔ id table. Ids are `i64` because they go straight into tensors.
#[derive(Debug, Clone)]
pub struct Dictionary {
    symbols: Vec<String>,
    indices: HashMap<String, i64>,
    num_bins: usize,
}

impl Dictionary {
    pub const BOS: i64 = 0;
    pub const PAD: i64 = 1;
    pub const EOS: i64 = 2;
    pub const UNK: i64 = 3;

    /// Reads `dict.txt` (lines `SYMBOL COUNT`) and appends `<mask>`,
    /// `<code_0..code_dict_size>` and `<bin_0..num_bins>` as the reference's
    /// task setup does.
    pub fn load(dict_txt: &Path, code_dict_size: usize, num_bins: usize) -> Result<Self> {
        let text = std::fs::read_to_string(dict_txt)
            .with_context(|| format!("reading the dictionary {}", dict_txt.display()))?;
        let mut file_symbols = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            // fairseq splits on the last space: the symbol itself may not contain one,
            // and an optional `#fairseq:overwrite` flag may follow the count.
            let (rest, overwrite) = match line.strip_suffix(" #fairseq:overwrite") {
                Some(rest) => (rest, true),
                None => (line, false),
            };
            let Some((symbol, count)) = rest.rsplit_once(' ') else {
                bail!("{}:{}: expected `SYMBOL COUNT`, found {line:?}", dict_txt.display(), n + 1);
            };
            count
                .parse::<i64>()
                .with_context(|| format!("{}:{}: the count {count:?} is not an integer", dict_txt.display(), n + 1))?;
            file_symbols.push((symbol.to_string(), overwrite, n + 1));
        }
        let mut dict = Self::with_specials(num_bins);
        for (symbol, overwrite, line) in file_symbols {
            if dict.indices.contains_key(&symbol) && !overwrite {
                bail!(
                    "{}:{line}: duplicate symbol {symbol:?} (fairseq requires `#fairseq:overwrite` to repeat one)",
                    dict_txt.display()
                );
            }
            dict.push(symbol);
        }
        dict.push("<mask>".to_string());
        for i in 0..code_dict_size {
            dict.push(format!("<code_{i}>"));
        }
        for i in 0..num_bins {
            dict.push(format!("<bin_{i}>"));
        }
        Ok(dict)
    }

    fn with_specials(num_bins: usize) -> Self {
        let mut dict = Dictionary { symbols: Vec::new(), indices: HashMap::new(), num_bins };
        for s in ["<s>", "<pad>", "</s>", "<unk>"] {
            dict.push(s.to_string());
        }
        dict
    }

    fn push(&mut self, symbol: String) {
        let id = self.symbols.len() as i64;
        // An overwritten symbol keeps its first id for look-ups, as in fairseq.
        self.indices.entry(symbol.clone()).or_insert(id);
        self.symbols.push(symbol);
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The id of `symbol`, or `<unk>` when it is not in the dictionary.
    pub fn index(&self, symbol: &str) -> i64 {
        self.indices.get(symbol).copied().unwrap_or(Self::UNK)
    }

    /// The symbol of `id`; ids out of range read as `<unk>`.
    pub fn symbol(&self, id: i64) -> &str {
        usize::try_from(id).ok().and_then(|i| self.symbols.get(i)).map_or("<unk>", String::as_str)
    }

    pub fn num_bins(&self) -> usize {
        self.num_bins
    }

    /// Id of `<bin_i>`: the bins are the last `num_bins` symbols (evaluation relies on it).
    pub fn bin_index(&self, i: usize) -> i64 {
        (self.len() - self.num_bins + i) as i64
    }

    /// The bin number of `id`, if `id` is a `<bin_i>` token.
    pub fn bin_of(&self, id: i64) -> Option<usize> {
        let first = self.bin_index(0);
        (id >= first && id < self.len() as i64).then(|| (id - first) as usize)
    }

    pub fn bos(&self) -> i64 {
        Self::BOS
    }
    pub fn pad(&self) -> i64 {
        Self::PAD
    }
    pub fn eos(&self) -> i64 {
        Self::EOS
    }
    pub fn unk(&self) -> i64 {
        Self::UNK
    }
}
