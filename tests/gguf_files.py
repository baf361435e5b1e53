"""Writing a tiny Qwen2 causal LM (memecap/models/tiny_causal_lm.py) as a GGUF file with the
`gguf` package, as llama.cpp's converter lays it out (Qwen2's projections need no reordering):
the header holds the config and the byte-level BPE tokenizer, the tensors are float32."""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM


def write_qwen2_gguf(folder: Path, out_file: Path) -> Path:
    import gguf

    model = AutoModelForCausalLM.from_pretrained(folder)
    c = model.config
    writer = gguf.GGUFWriter(str(out_file), "qwen2")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_embedding_length(c.hidden_size)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    saved = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = saved["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in saved["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in saved["model"]["merges"]])
    writer.add_eos_token_id(c.eos_token_id)
    writer.add_pad_token_id(c.pad_token_id)
    writer.add_bos_token_id(c.eos_token_id)
    writer.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, c.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue  # the tied head is the token embedding
        module, suffix = key.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
