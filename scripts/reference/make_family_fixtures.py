#!/usr/bin/env python3
"""Writes tests/fixtures/families/<family>/: for each encoder family a tiny
random-initialised model made by `transformers` from a config (seeded),
in the layout of a Hub sentence-transformers folder (config.json,
model.safetensors, tokenizer files, modules.json, 1_Pooling/,
sentence_bert_config.json; 2_Normalize/ for MPNet as in all-mpnet-base-v2),
with `reference.json`: PyTorch's embeddings of a few dozen texts (one of
them truncated), CLS (raw) and mean (L2-normalised), at max length 32.

No tokenizer can be downloaded here, so each is trained (seeded, a few
thousand lines of ../shared/data/books) with the `tokenizers` library in
the family's real setup and saved through its `transformers` class:
byte-level BPE with RoBERTa's post-processor (RoBERTa), byte-level BPE
with [CLS]/[SEP] (ModernBERT), SentencePiece-style Unigram (XLM-R),
WordPiece (DistilBERT, MPNet with its <s>/</s> specials). Weights are
stored as float16 to keep the fixtures small; both sides compute in float32
from those values.

Setup (once): python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
Run:          .venv-ref/bin/python scripts/reference/make_family_fixtures.py
"""
import argparse
import json
import pathlib
import random
import shutil

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_LEN = 32
HIDDEN, HEADS, INTER = 32, 4, 64
# Ten times BERT's 0.02: random weights that small leave attention nearly
# uniform, and a wrong position scheme would hide under the tolerance.
INIT = 0.2


def corpus(books, n=3000, seed=0):
    lines = []
    for path in sorted(pathlib.Path(books).glob("*.txt"))[:4]:
        lines += [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    random.Random(seed).shuffle(lines)
    return lines[:n]


def texts(books):
    """A few dozen varied sentences, one long enough to be truncated."""
    lines = [l for l in corpus(books, 20000, seed=1) if 4 <= len(l.split()) <= 14][:26]
    lines += ["A man is playing a guitar.", "Rain again today?", "Hello",
              " ".join(lines[:8])]
    return lines


def wordpiece(lines, specials, unk, vocab_size=400):
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    return tok.get_vocab()


def byte_bpe(lines, specials, vocab_size=400):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    data = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["merges"]]
    return tok, data["vocab"], merges


def unigram(lines, specials, vocab_size=400):
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(lines, trainer)
    return [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]


def make_roberta(lines, model_type="roberta"):
    _, vocab, merges = byte_bpe(lines, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
    cfg = transformers.RobertaConfig(initializer_range=INIT, vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=HEADS, intermediate_size=INTER,
                                     max_position_embeddings=MAX_LEN + 2 + 2, type_vocab_size=1,
                                     pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=2)
    return tok, transformers.RobertaModel(cfg, add_pooling_layer=False)


def make_xlm_roberta(lines):
    vocab = unigram(lines, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = transformers.XLMRobertaTokenizer(vocab=vocab)
    cfg = transformers.XLMRobertaConfig(initializer_range=INIT, vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2,
                                        num_attention_heads=HEADS, intermediate_size=INTER,
                                        max_position_embeddings=MAX_LEN + 2 + 2, type_vocab_size=1,
                                        pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=2)
    return tok, transformers.XLMRobertaModel(cfg, add_pooling_layer=False)


def make_distilbert(lines):
    vocab = wordpiece(lines, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]")
    tok = transformers.DistilBertTokenizer(vocab=vocab)
    cfg = transformers.DistilBertConfig(initializer_range=INIT, vocab_size=len(vocab), dim=HIDDEN, n_layers=2, n_heads=HEADS,
                                        hidden_dim=INTER, max_position_embeddings=MAX_LEN + 2,
                                        pad_token_id=0)
    return tok, transformers.DistilBertModel(cfg)


def make_mpnet(lines):
    vocab = wordpiece(lines, ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], "[UNK]")
    tok = transformers.MPNetTokenizer(vocab=vocab)
    cfg = transformers.MPNetConfig(initializer_range=INIT, vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2,
                                   num_attention_heads=HEADS, intermediate_size=INTER,
                                   max_position_embeddings=MAX_LEN + 2 + 2, pad_token_id=1,
                                   bos_token_id=0, eos_token_id=2)
    return tok, transformers.MPNetModel(cfg, add_pooling_layer=False)


def make_modernbert(lines):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe, _, _ = byte_bpe(lines, specials)
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", bpe.token_to_id("[CLS]")), ("[SEP]", bpe.token_to_id("[SEP]"))])
    bpe.decoder = decoders.ByteLevel()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"])
    # Three layers: global, local (sliding window of ±4 tokens), global.
    cfg = transformers.ModernBertConfig(initializer_range=INIT, vocab_size=bpe.get_vocab_size(), hidden_size=HIDDEN,
                                        num_hidden_layers=3, num_attention_heads=HEADS,
                                        intermediate_size=INTER // 2 * 3 // 2, max_position_embeddings=64,
                                        global_attn_every_n_layers=2, local_attention=8,
                                        # (ModernBERT-base has none; here so train mode has dropout)
                                        attention_dropout=0.1, mlp_dropout=0.1, embedding_dropout=0.1,
                                        pad_token_id=bpe.token_to_id("[PAD]"),
                                        cls_token_id=bpe.token_to_id("[CLS]"),
                                        sep_token_id=bpe.token_to_id("[SEP]"),
                                        bos_token_id=bpe.token_to_id("[CLS]"),
                                        eos_token_id=bpe.token_to_id("[SEP]"))
    return tok, transformers.ModernBertModel(cfg)


FAMILIES = {
    "roberta": (make_roberta, "mean", False),
    "xlm-roberta": (make_xlm_roberta, "mean", False),
    "distilbert": (make_distilbert, "cls", False),
    "mpnet": (make_mpnet, "mean", True),
    "modernbert": (make_modernbert, "mean", False),
}


def sentence_transformers_files(out, hidden, pooling, normalize):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        (out / "2_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling/config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True}, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": MAX_LEN, "do_lower_case": False}, indent=2))


def embed(model, tok, sentences):
    enc = tok(sentences, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    enc.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return enc, hidden[:, 0], mean


def rows(t):
    return [[float(f"{v:.7g}") for v in r] for r in t.tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--books", default=str(ROOT / "../shared/data/books"))
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/families"))
    args = ap.parse_args()
    lines, sentences = corpus(args.books), texts(args.books)
    for family, (make, pooling, normalize) in FAMILIES.items():
        torch.manual_seed(0)
        random.seed(0)
        tok, model = make(lines)
        model = model.eval()
        # float16-representable weights, stored as float16 (small files).
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
        out = pathlib.Path(args.out) / family
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        model.config.save_pretrained(out)
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
                  out / "model.safetensors", metadata={"format": "pt"})
        tok.save_pretrained(out)
        sentence_transformers_files(out, HIDDEN, pooling, normalize)

        # The reference from the saved folder, as a user would load it.
        model = transformers.AutoModel.from_pretrained(out, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(out)
        enc, cls, mean = embed(model, tok, sentences)
        ref = {
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
            "class": type(model).__name__,
            "max_len": MAX_LEN,
            "sentences": sentences,
            "token_counts": enc["attention_mask"].sum(1).tolist(),
            "cls_raw": rows(cls),
            "mean_normalized": rows(torch.nn.functional.normalize(mean, dim=1)),
        }
        if family == "xlm-roberta":
            # CamemBERT is the same network under another model_type.
            camembert = transformers.CamembertModel(transformers.CamembertConfig(
                **{k: v for k, v in model.config.to_dict().items() if k != "model_type"})).eval()
            camembert.load_state_dict(model.state_dict())
            _, c_cls, c_mean = embed(camembert, tok, sentences)
            ref["camembert_max_diff"] = float(max((c_cls - cls).abs().max(), (c_mean - mean).abs().max()))
        if family == "mpnet":
            ref["mpnet_buckets_-600_600"] = transformers.models.mpnet.modeling_mpnet.MPNetEncoder \
                .relative_position_bucket(torch.arange(-600, 601)).tolist()
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(str(out), device="cpu", model_kwargs={"dtype": torch.float32})
        st_vecs = torch.tensor(st.encode(sentences, batch_size=64))
        expected = mean if pooling == "mean" else cls
        if normalize:
            expected = torch.nn.functional.normalize(expected, dim=1)
        ref["sentence_transformers"] = {"pooling": pooling, "normalize": normalize,
                                        "max_diff_vs_transformers": float((st_vecs - expected).abs().max())}
        (out / "reference.json").write_text(json.dumps(ref) + "\n", encoding="utf-8")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{family}: {type(model).__name__}, vocab {model.config.vocab_size}, "
              f"tokens {min(ref['token_counts'])}-{max(ref['token_counts'])}, "
              f"sentence-transformers vs transformers {ref['sentence_transformers']['max_diff_vs_transformers']:.1e}, "
              f"{size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
