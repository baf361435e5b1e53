"""Every setting of a run: nested dataclasses, filled from a YAML recipe plus `key=value` overrides.

    cfg = load_config("clipcap_lora", ["optim.lr=3e-4", "model.decoder.lora.r=16"])

Unknown keys and values of the wrong type raise with the dotted key's name, so a typo in a
recipe never silently trains the default; a family's model reads only its own sections
(families.py). Cross-field rules live in `__post_init__`.

    sections.py   the shared sections, `ModelConfig` (built from memecap.models.FAMILIES) and `Config`
                  (a family's own sections: memecap/models/<family>/settings.py)
    families.py   which sections each family reads; keys that moved; older saved configs
    binding.py    mappings -> dataclasses, errors naming the key
    files.py      recipes, overrides, saved configs
"""
from memecap.config.families import FAMILY_SECTIONS, MOVED_KEYS, family_model_values
from memecap.config.files import (RECIPES_DIR, config_from_dict, list_recipes, load_config, load_saved_config,
                                  model_config_from_export, parse_overrides, resolve_recipe_path, save_config,
                                  to_dict, to_yaml)
from memecap.config.sections import (OCR_CLEANING_RULES, CacheConfig, Config, DataConfig, EncoderConfig, EvalConfig,
                                     GenerationConfig, ModelConfig, OcrConfig, OptimConfig, ScstConfig, StageConfig,
                                     SyntheticConfig, TinyConfig, TrainConfig)
from memecap.config_checks import WEIGHT_DTYPES, ConfigError, LoraConfig
from memecap.models.clipcap.settings import DecoderConfig, MapperConfig
from memecap.models.lstm.settings import LstmConfig
from memecap.models.rudolph.settings import RudolphConfig, RudolphLossWeights

__all__ = ["FAMILY_SECTIONS", "MOVED_KEYS", "OCR_CLEANING_RULES", "RECIPES_DIR", "WEIGHT_DTYPES", "CacheConfig",
           "Config", "ConfigError", "DataConfig", "DecoderConfig", "EncoderConfig", "EvalConfig", "GenerationConfig",
           "LoraConfig", "LstmConfig", "MapperConfig", "ModelConfig", "OcrConfig", "OptimConfig", "RudolphConfig",
           "RudolphLossWeights", "ScstConfig", "StageConfig", "SyntheticConfig", "TinyConfig", "TrainConfig",
           "config_from_dict", "family_model_values", "list_recipes", "load_config", "load_saved_config",
           "model_config_from_export", "parse_overrides", "resolve_recipe_path", "save_config", "to_dict", "to_yaml"]
