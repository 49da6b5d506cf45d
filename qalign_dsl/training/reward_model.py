"""GRPO's reward functions beyond the rubric: a scalar reward model (the paper's baselines,
e.g. Skywork-Reward or URM: any `AutoModelForSequenceClassification` path or Hub id), a
Python function, and the recipe's weighted sum of them.

TRL sums the functions with `reward_weights` and logs each one's mean and spread as
`rewards/<name>/mean` and `rewards/<name>/std`, so per-reward logging needs only distinct
names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from qalign_dsl.training.completions import completion_text
from qalign_dsl.training.config import ConfigError, RewardSpec, TrainingConfig


class ScalarRewardModel:
    """A sequence-classification reward model as a TRL reward function: the conversation
    (prompt + completion, through the reward model's own chat template when it has one)
    -> the first logit."""

    def __init__(self, model: str, name: str = "reward_model", device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, max_length: int = 4096) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if device == "auto":  # this process's GPU under accelerate / torchrun, else the CPU
            device = (f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
                      if torch.cuda.is_available() else "cpu")
        self.__name__ = name
        self.identity = model
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model, num_labels=1, dtype=torch_dtype).to(device).eval()  # type: ignore[arg-type]
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length

    def text(self, prompt: Any, completion: Any) -> str:
        response = completion_text(completion)
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt])
        messages.append({"role": "assistant", "content": response})
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        import torch

        texts = [self.text(p, c) for p, c in zip(prompts, completions)]
        rewards: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt",
                                       padding=True, truncation=True,
                                       max_length=self.max_length, add_special_tokens=False)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                rewards.extend(self.model(**batch).logits[:, 0].float().tolist())
        return rewards


def load_python_reward(spec: RewardSpec) -> Callable[..., list[float | None]]:
    """`module:function` -> the function, named `spec.name` for TRL's logs."""
    assert spec.function is not None
    module_name, _, attribute = spec.function.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"reward function `{spec.function}` ({spec.name}): cannot import: "
                          f"{error}") from None
    if not callable(function):
        raise ConfigError(f"reward function `{spec.function}` ({spec.name}) is not callable")

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        return list(function(prompts=prompts, completions=completions, **kwargs))

    reward.__name__ = spec.name
    return reward


def build_reward_functions(config: TrainingConfig, document: dict[str, Any] | None
                           ) -> tuple[list[Any], list[float]]:
    """The recipe's reward functions (in order) and their weights."""
    functions: list[Any] = []
    for spec in config.rewards:
        if spec.kind == "rubric":
            from qalign_dsl.judge.runtime import judge_from_spec
            from qalign_dsl.training.reward import QalignReward

            assert document is not None
            assert config.judge is not None  # load_config requires a judge for the rubric
            judge = judge_from_spec(document, config.judge,
                                    short_circuit=config.judge.short_circuit)
            audit = None
            if config.judge.audit is not None:
                from qalign_dsl.training.audit import RewardAudit

                audit = RewardAudit(document, config.judge.audit, config.output_dir,
                                    seed=int(config.trainer.get("seed", 0)))
            reward = QalignReward(document, judge,
                                  format_penalty=config.format_penalty, audit=audit)
            if spec.name != "qalign":
                reward.__name__ = spec.name
            functions.append(reward)
        elif spec.kind == "model":
            assert spec.model is not None
            try:
                functions.append(ScalarRewardModel(spec.model, spec.name, **spec.options))
            except OSError as error:
                raise ConfigError(f"reward model `{spec.model}` ({spec.name}): {error}") from None
        else:
            functions.append(load_python_reward(spec))
    return functions, [spec.weight for spec in config.rewards]
