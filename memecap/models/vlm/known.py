"""The shapes of the shipped recipes' base models, so `memecap plan` needs no download.

The key sizes of each model's published config.json (Hub id -> model_type, text and vision
settings). Other models' config.json is read (a local folder, or the Hub). The values are the
published ones as recorded when the recipes were written; a test builds each on the meta device.
"""
from __future__ import annotations

KNOWN_CONFIGS = {
    "Qwen/Qwen2-VL-2B-Instruct": {
        "model_type": "qwen2_vl", "tie_word_embeddings": True,
        "text_config": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                            num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        "vision_config": dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                              spatial_merge_size=2, temporal_patch_size=2),
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "model_type": "qwen2_5_vl", "tie_word_embeddings": True,
        "text_config": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                            num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
                            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        "vision_config": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                              fullatt_block_indexes=[7, 15, 23, 31]),
    },
    "Qwen/Qwen3-VL-4B-Instruct": {
        "model_type": "qwen3_vl", "tie_word_embeddings": True,
        "text_config": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                            rope_parameters={"rope_type": "default", "rope_theta": 5000000,
                                             "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
        "vision_config": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                              patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                              deepstack_visual_indexes=[5, 11, 17]),
    },
    "HuggingFaceTB/SmolVLM-500M-Instruct": {
        "model_type": "smolvlm", "tie_word_embeddings": False, "scale_factor": 4,
        "text_config": dict(model_type="llama", vocab_size=49280, hidden_size=960, intermediate_size=2560,
                            num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                            tie_word_embeddings=False),
        "vision_config": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=512, patch_size=16),
    },
}


def known_config(name: str):
    """The transformers config object of a shipped recipe's base, or None."""
    if name not in KNOWN_CONFIGS:
        return None
    from transformers import AutoConfig

    values = dict(KNOWN_CONFIGS[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)
