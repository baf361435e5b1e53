"""Writing a tiny causal LM (memecap/models/tiny_causal_lm.py) as a GGUF file with the `gguf`
package, laid out as llama.cpp's converter writes Qwen2 and Gemma 3: the header holds the config
and the tokenizer (Qwen2: byte-level BPE with its merges; Gemma: a sentencepiece-kind vocabulary
in merge order with scores and no merges), the tensors are float32 under GGUF's names (Qwen2's
projections need no reordering; Gemma stores its RMSNorm scales as 1 + weight)."""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

ARCH = {"qwen2": "qwen2", "gemma3_text": "gemma3"}


def _write_config(writer, c) -> None:
    writer.add_context_length(c.max_position_embeddings)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_embedding_length(c.hidden_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    if c.model_type == "gemma3_text":
        writer.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
        writer.add_sliding_window(c.sliding_window)
    else:
        writer.add_rope_freq_base(c.rope_parameters["rope_theta"])


def _write_tokenizer(writer, folder: Path, c) -> None:
    import gguf

    saved = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = saved["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in saved["added_tokens"]}
    writer.add_token_list(tokens)
    writer.add_eos_token_id(c.eos_token_id)
    writer.add_pad_token_id(c.pad_token_id)
    writer.add_bos_token_id(c.bos_token_id if c.bos_token_id is not None else c.eos_token_id)
    if c.model_type == "gemma3_text":
        writer.add_tokenizer_model("llama")  # sentencepiece kind
        writer.add_tokenizer_pre("default")
        writer.add_token_scores([-float(i) for i in range(len(tokens))])
        writer.add_token_types([gguf.TokenType.CONTROL if t in special and not t.startswith("<0x")
                                else gguf.TokenType.BYTE if t.startswith("<0x") else gguf.TokenType.NORMAL
                                for t in tokens])
        writer.add_unk_token_id(vocab["<unk>"])
        writer.add_add_bos_token(True)
        return
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in saved["model"]["merges"]])
    writer.add_add_bos_token(False)


def write_gguf(folder: Path, out_file: Path) -> Path:
    """The model saved in `folder` (qwen2 or gemma3_text) as the GGUF file `out_file`."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(folder)
    c = model.config
    arch = ARCH[c.model_type]
    writer = gguf.GGUFWriter(str(out_file), arch)
    _write_config(writer, c)
    _write_tokenizer(writer, folder, c)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     c.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue  # the tied head is the token embedding
        module, suffix = key.rsplit(".", 1)
        values = tensor.float().numpy()
        if arch == "gemma3" and key.endswith("norm.weight"):
            values = values + 1
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
