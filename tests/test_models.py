"""Helpers shared by the trainer stages."""

from __future__ import annotations

import json
from pathlib import Path

from stages.models import save_trained


class SetOrderedAdapter:
    """Stands in for a PeftModel whose `all-linear` target modules come out of a set in any order."""

    def save_pretrained(self, out_dir: str, safe_serialization: bool) -> None:
        assert safe_serialization
        config = {"r": 4, "target_modules": ["v_proj", "down_proj", "q_proj"], "peft_type": "LORA"}
        (Path(out_dir) / "adapter_config.json").write_text(json.dumps(config))


def test_saved_adapter_config_lists_target_modules_in_a_stable_order(tmp_path):
    save_trained(SetOrderedAdapter(), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert config["r"] == 4
