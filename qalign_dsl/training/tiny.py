"""Build small local models and tokenizers, so that tests, benchmarks and `qalc demo` run
on a machine with no model downloads.

Everything is saved with `save_pretrained` and loaded back through the same
`from_pretrained(path)` code that real checkpoints go through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qalign_dsl.ir import Rubric

# A Llama-3-style chat template: enough structure that the judge's prefix / suffix split
# and the label-token check are exercised the way real chat models exercise them. The
# generation markers let TRL train on assistant tokens only (assistant_only_loss).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim }}<|eot_id|>{% endgeneration %}"
    "{% else %}{{ message['content'] | trim }}<|eot_id|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]

BASE_CORPUS = [
    "Answer: A", "Answer: B", "Answer: C", "Answer: D", "Answer: F", "Answer: NA",
    "Answer: True", "Answer: False", "True", "False", "NA", "A B C D F",
    "How well does the response avoid harm?", "Does the response answer the question?",
    "The user asked a question and the assistant gave a response.",
    "You are a careful, impartial judge of AI assistant responses.",
    "Here is how to bake bread: mix flour, water, yeast and salt, then bake.",
    "I cannot help with making a weapon, but I can explain how to stay safe.",
    "def add(a, b):\n    return a + b\n",
    "0123456789 !?.,;:'\"()[]{}<>|/\\-_=+*&^%$#@~`",
]


def build_tokenizer(path: Path, corpus: Iterable[str] = (), vocab_size: int = 2000) -> Path:
    """Train a byte-level BPE tokenizer (any text is encodable) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = list(BASE_CORPUS) + list(corpus)
    tokenizer.train_from_iterator(texts * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|pad|>", unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    return path


def build_llama(path: Path, tokenizer_path: Path, hidden_size: int = 64, layers: int = 2,
                heads: int = 1, intermediate_size: int | None = None,
                max_positions: int = 8192, seed: int = 0) -> Path:
    """A randomly initialised Llama saved beside its tokenizer (head_dim 64, as vLLM's CPU
    attention requires)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden_size // heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def train_micro_judge(
    model_path: Path,
    document: dict,
    examples: list[tuple[str, str, dict[str, str]]],
    steps: int = 200,
    learning_rate: float = 1e-2,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Teach a tiny judge to give chosen answers on its own prompts, in seconds on a CPU.

    `examples` are (prompt, response, {question id: label}): the judge runtime renders the
    exact prompts it will later score, and the model learns to put its next-token mass on
    the wanted label. The trained model is saved back to `model_path`. `progress(step, loss)`
    is called after every step.
    """
    return fit_judge_labels(model_path, [(document, examples)], steps, learning_rate, seed,
                            batch_size, progress)


def fit_judge_labels(
    model_path: Path,
    lessons: Sequence[tuple[Rubric | Mapping[str, Any], Sequence[tuple[Any, str, dict[str, str]]]]],
    steps: int = 200,
    learning_rate: float = 1e-2,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """`train_micro_judge` for several rubrics at once: `lessons` pairs each rubric with its
    (prompt, response, {question id: label}) examples."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from qalign_dsl.judge.backends.transformers import TransformersBackend
    from qalign_dsl.judge.prompts import plan_sample
    from qalign_dsl.judge.runtime import Judge

    backend = TransformersBackend(str(model_path))
    sequences: list[tuple[list[int], int]] = []
    for document, examples in lessons:
        judge = Judge(document, backend)
        for prompt, response, wanted in examples:
            for plan in plan_sample(judge.rubric, judge.frames, prompt, response,
                                    judge.specials):
                head = backend.encode(plan.head)
                for q, suffix in zip(plan.questions, plan.suffixes):
                    question = judge.rubric.questions[q]
                    if question.id not in wanted:
                        continue
                    label = question.labels.index(wanted[question.id])
                    sequences.append((head + backend.encode(suffix),
                                      judge.label_tokens[q][label]))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    # Short warm-up, then linear decay: a high peak rate finds the signal fast, the decay
    # and clipping keep it from diverging afterwards.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * max(0.05, 1 - step / steps))
    pad = backend.tokenizer.pad_token_id or 0
    for step in range(steps):
        batch = rng.sample(sequences, min(batch_size, len(sequences)))
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        last = torch.tensor([len(ids) - 1 for ids, _ in batch])
        targets = torch.tensor([label for _, label in batch])
        # The language-model head only where the label is read: most of a step's cost else.
        hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        logits = model.lm_head(hidden[torch.arange(len(batch)), last])
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, loss.item())
    model.eval()
    model.save_pretrained(str(model_path))
    return model_path


_NOUNS = ["bread", "water", "garden", "music", "book", "tea", "soup", "bike", "plant", "map",
          "letter", "song", "cake", "lamp", "chair", "river", "school", "friend", "dog", "city"]
_VERBS = ["bake", "read", "paint", "visit", "clean", "cook", "plan", "write", "carry", "draw"]
_HARM = ["poison", "weapon", "explosive", "attack", "hurt", "knife", "bomb", "kill"]
MICRO_PROMPTS = ["How do I do this?", "Can you help me with my plan?", "What should I do next?"]


def synthetic_responses(count: int, harmful: bool, seed: int) -> list[str]:
    """Short responses; harmful ones carry harm words among everyday words."""
    import random

    rng = random.Random(seed)
    responses = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(3, 5)):
            words += [rng.choice(_VERBS), "the", rng.choice(_NOUNS)]
        if harmful:
            for _ in range(rng.randint(1, 3)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(_HARM))
        responses.append(" ".join(words).capitalize() + ".")
    return responses


def micro_judge_examples(document: Rubric | Mapping[str, Any], count: int = 60,
                         extra_harmful: Sequence[str] = (), extra_benign: Sequence[str] = ()
                         ) -> list[tuple[str, str, dict[str, str]]]:
    """Training examples: harmlessness questions answered by whether a response is harmful.
    `extra_*` responses are added after the synthetic ones."""
    rubric = Rubric.of(document)
    examples = []
    for responses, harmful in ((synthetic_responses(count, True, 1) + list(extra_harmful), True),
                               (synthetic_responses(count, False, 2) + list(extra_benign), False)):
        for n, response in enumerate(responses):
            for prompt in MICRO_PROMPTS[n % 2: n % 2 + 2]:
                wanted = {}
                for question in rubric.questions:
                    if question.principle != "harmlessness":
                        continue
                    scored = [(v, label) for label, v in zip(question.labels, question.values)
                              if v is not None]
                    if question.kind == "binary":
                        assert question.fail_label is not None
                        passing = next(label for _, label in scored
                                       if label != question.fail_label)
                        wanted[question.id] = question.fail_label if harmful else passing
                    else:
                        wanted[question.id] = min(scored)[1] if harmful else max(scored)[1]
                examples.append((prompt, response, wanted))
    return examples


def build_reward_model(path: Path, tokenizer_path: Path, hidden_size: int = 64, layers: int = 2,
                       heads: int = 1, seed: int = 0) -> Path:
    """A randomly initialised scalar reward model (LlamaForSequenceClassification, one
    label) saved beside its tokenizer: the shape of Skywork / URM reward models, tiny."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden_size // heads,
        intermediate_size=2 * hidden_size, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


# A graded toy judge for tests/data/judge/micro.qal: each question reads one feature of the
# response (harm words, step words, length), so the judge's rewards take several values
# and a student must learn every feature to rank responses as the judge does.
_STEPS = ["first", "then", "next"]


def graded_answers(response: str) -> dict[str, str]:
    """The graded toy judge's intended answers to micro.qal's four questions."""
    words = [w.strip(".,!?;:").lower() for w in response.split()]
    harm = sum(w in _HARM for w in words)
    steps = sum(w in _STEPS for w in words)
    return {
        "physical_harm.gate": "False" if harm >= 2 else "True",
        "physical_harm.grade": "A" if not harm else "C" if harm == 1 else "F",
        "relevance.gate": "True" if steps else "False",
        "relevance.grade": "A" if len(words) <= 8 else "C" if len(words) <= 14 else "F",
    }


def feature_responses(count: int, seed: int) -> list[str]:
    """Everyday sentences with a random number of harm and step words and a random length:
    every feature the graded toy judge reads varies independently."""
    import random

    rng = random.Random(seed)
    responses = []
    for _ in range(count):
        words: list[str] = []
        for _ in range(rng.randint(1, 5)):
            words += [rng.choice(_VERBS), "the", rng.choice(_NOUNS)]
        for pool, choices in ((_HARM, (0, 0, 1, 2, 3)), (_STEPS, (0, 1, 2))):
            for _ in range(rng.choice(choices)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
        responses.append(" ".join(words).capitalize() + ".")
    return responses


def graded_judge_examples(count: int = 300, seed: int = 0
                          ) -> list[tuple[str, str, dict[str, str]]]:
    """Training examples for the graded toy judge: (prompt, response, answers)."""
    return [(MICRO_PROMPTS[n % len(MICRO_PROMPTS)], response, graded_answers(response))
            for n, response in enumerate(feature_responses(count, seed))]
