//! The OFA tokenizer: GPT-2 byte-level BPE (from the `tokenizers` crate) to
//! GPT-2 ids, then the fairseq dictionary from GPT-2 ids to model ids (spec §3).

use super::dictionary::Dictionary;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{Decoder, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer as HfTokenizer};

/// Text ↔ model ids, exactly as the reference's `encode_text` / decode.
pub struct Tokenizer {
    bpe: HfTokenizer,
    dict: Dictionary,
}

/// GPT-2's pre-tokeniser (its regex, then bytes to printable characters),
/// without a prefix space, as fairseq's GPT-2 encoder applies it.
pub fn gpt2_pre_tokenizer() -> ByteLevel {
    ByteLevel::new(false, false, true)
}

/// The pieces GPT-2's regex splits `text` into, already byte-mapped
/// (a leading space shows as `Ġ`). The synthetic BPE is built from these.
pub fn gpt2_pieces(text: &str) -> Result<Vec<String>> {
    let mut pre = PreTokenizedString::from(text);
    gpt2_pre_tokenizer().pre_tokenize(&mut pre).map_err(|e| anyhow!("pre-tokenising {text:?}: {e}"))?;
    Ok(pre
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_string())
        .collect())
}

impl Tokenizer {
    /// Loads a reference BPE folder as is: `encoder.json`, `vocab.bpe`, `dict.txt`.
    pub fn from_bpe_dir(dir: &Path, code_dict_size: usize, num_bins: usize) -> Result<Self> {
        let file = |name: &str| -> Result<String> {
            let p = dir.join(name);
            anyhow::ensure!(
                p.is_file(),
                "{} is missing: --bpe-dir must hold encoder.json, vocab.bpe and dict.txt (OFA's utils/BPE folder)",
                p.display()
            );
            p.to_str().map(str::to_string).ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
        };
        let (vocab, merges) = (file("encoder.json")?, file("vocab.bpe")?);
        let model = BPE::from_file(&vocab, &merges)
            .build()
            .map_err(|e| anyhow!("loading BPE from {vocab} and {merges}: {e}"))?;
        let mut bpe = HfTokenizer::new(model);
        bpe.with_pre_tokenizer(Some(gpt2_pre_tokenizer()));
        let dict = Dictionary::load(Path::new(&file("dict.txt")?), code_dict_size, num_bins)?;
        Ok(Tokenizer { bpe, dict })
    }

    pub fn dictionary(&self) -> &Dictionary {
        &self.dict
    }

    /// GPT-2 BPE ids of `text` (what fairseq's GPT-2 encoder writes out).
    pub fn gpt2_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.bpe.encode_fast(text, false).map_err(|e| anyhow!("BPE-encoding {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `encode_text(text)` of the reference with BPE: model ids, no bos/eos.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self.gpt2_ids(text)?.into_iter().map(|id| self.dict.index(&id.to_string())).collect())
    }

    /// `encode_text(text, use_bpe=False)`: whitespace-separated symbols looked up as they are.
    pub fn encode_symbols(&self, text: &str) -> Vec<i64> {
        text.split_whitespace().map(|s| self.dict.index(s)).collect()
    }

    /// Ids back to text as the reference's caption decoding does: bos, eos
    /// and pad dropped; symbols starting with `<` (bins, codes, `<mask>`,
    /// `<unk>`) pass through literally, as do symbols that are not GPT-2 ids
    /// (the reference would crash on those).
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let mut tokens = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == Dictionary::BOS || id == Dictionary::EOS || id == Dictionary::PAD {
                continue;
            }
            let symbol = self.dict.symbol(id);
            let token = match symbol.parse::<u32>() {
                Ok(gpt2) if !symbol.starts_with('<') => self
                    .bpe
                    .id_to_token(gpt2)
                    .with_context(|| format!("dictionary symbol {symbol} is not a GPT-2 id of encoder.json"))?,
                _ => symbol.to_string(),
            };
            tokens.push(token);
        }
        let mut out =
            ByteLevelDecoder::default().decode_chain(tokens).map_err(|e| anyhow!("byte-level decoding: {e}"))?;
        Ok(out.pop().unwrap_or_default())
    }
}
