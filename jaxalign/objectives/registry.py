"""From a config's `objective` section to what the trainer needs: examples, a loss, a prompt.

    objective = registry.make(config.objective, tokenizer, seed=config.seed, schema="preference")
    source = objective.source(records)          # random access: the examples of every record, in order
    loss_fn = objective.loss_fn                 # loss_fn(logits, batch) -> (loss, metrics)
    lm.generate(p)  # LM renders p with objective.prompt_template (dialogue.render)

`OBJECTIVES` is the table of methods: each name's module declares its options, ``DEFAULTS``, and
``build(opts, tokenizer, seed, schema) -> Objective``, and may declare ``HEAD`` (the model's head,
"lm" by default) and ``prompt_template(opts)`` (`examples.PROMPT_TEMPLATE` by default). The
`Objective` carries what other modules would otherwise re-derive from the name, so nothing outside
this module compares objective names. RL refinement (``name = "rl"``, options
`policy_gradient.DEFAULTS`) makes its examples by sampling, so it has options here but no builder.
A key that is not among an objective's options is an error rather than silently ignored. Which record
schemas each objective takes is `check_schema`'s business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import ml_collections

from jaxalign.config import check_keys
from jaxalign.data import examples
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import (
    coh,
    dpo,
    edit_chain,
    lm,
    policy_gradient,
    reward,
    sft,
    sft_pos_neg,
    stable_alignment,
    unlikelihood,
)
from jaxalign.objectives.objective import ExpandedSource, Objective

__all__ = ["OBJECTIVES", "RL", "SCHEMAS", "ExpandedSource", "Objective", "check_schema", "default_config",
           "check", "check_chat_template", "head", "is_rl", "make", "prompt_template", "resolved"]

SCHEMAS = ("preference", "text", "labelled", "group")  # the record schemas `make` knows
RL = "rl"  # policy-gradient refinement: options in policy_gradient, its loop in jaxalign.methods.rl
# The objectives `make` builds (the rows of the Chain of Hindsight paper's Table 4, DPO, Second
# Thoughts' edit chains and reward model, Stable Alignment), in the order errors list them.
OBJECTIVES: dict[str, ModuleType] = {
    "sft": sft, "sft_pos_neg": sft_pos_neg, "unlikelihood": unlikelihood, "dpo": dpo,
    "edit_chain": edit_chain, "reward": reward, "coh": coh, "stable_alignment": stable_alignment,
}


def _name(objective_cfg: Mapping[str, Any]) -> str:
    return objective_cfg.get("name", "sft")


def is_rl(objective_cfg: Mapping[str, Any]) -> bool:
    """Whether an objective section asks for RL refinement (run by its own loop, not by `make`)."""
    return _name(objective_cfg) == RL


def default_config(name: str = "coh") -> ml_collections.ConfigDict:
    """The objective section with `name` and its defaults (e.g. ``default_config("dpo")``)."""
    if name == RL:
        return ml_collections.ConfigDict({"name": RL, **policy_gradient.DEFAULTS})
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join([*OBJECTIVES, RL])}")
    return ml_collections.ConfigDict({"name": name, **OBJECTIVES[name].DEFAULTS})


def head(objective_cfg: Mapping[str, Any]) -> str:
    """The head the objective's model ends in: "lm" (the unembedding) or "score" (a reward model)."""
    return getattr(OBJECTIVES.get(_name(objective_cfg)), "HEAD", "lm")


def prompt_template(objective_cfg: Mapping[str, Any]) -> str:
    """The generation prompt template of a saved run's objective section (a dict or ConfigDict)."""
    template = getattr(OBJECTIVES.get(_name(objective_cfg)), "prompt_template", None)
    return examples.PROMPT_TEMPLATE if template is None else template(objective_cfg)


def resolved(objective_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """An objective section with every option spelt out: the defaults of options it leaves out
    (e.g. added since it was saved) and the values a None default stands for (CoH's format
    defaults), so that two spellings of the same objective compare equal."""
    name = _name(objective_cfg)
    if name == RL:
        return {"name": name, **policy_gradient.DEFAULTS, **objective_cfg}
    module = OBJECTIVES.get(name)
    if module is None:
        return dict(objective_cfg)
    opts = {"name": name, **module.DEFAULTS, **objective_cfg}
    resolve = getattr(module, "resolve", None)
    return resolve(opts) if resolve is not None else opts


def check(objective_cfg: Mapping[str, Any]) -> None:
    """The errors of an objective section that need no tokenizer or data (unknown name or key, bad
    options), so that a run can stop before it writes anything."""
    name = _name(objective_cfg)
    if name == RL:
        return  # checked by jaxalign.methods.rl before its run starts
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective.name={name!r}; known: {', '.join([*OBJECTIVES, RL])}")
    module = OBJECTIVES[name]
    check_keys(objective_cfg, ("name", *module.DEFAULTS), f"config.objective (name={name!r})")
    opts = resolved(objective_cfg)
    if "normalization" in opts:
        lm.make_loss_fn(opts["normalization"])
    if hasattr(module, "make_format"):  # CoH: markers, variants and format
        module.make_format(opts)


def make(objective_cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, *, seed: int = 0,
         schema: str = "preference") -> Objective:
    """The objective `objective_cfg.name` with its options, for records of `schema`."""
    name = _name(objective_cfg)
    if name == RL:
        raise ValueError("config.objective.name='rl' has no examples or loss of its own here: RL runs are "
                         "driven by jaxalign.methods.rl")
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective.name={name!r}; known: {', '.join(OBJECTIVES)}")
    module = OBJECTIVES[name]
    check_keys(objective_cfg, ("name", *module.DEFAULTS), f"config.objective (name={name!r})")
    opts = {**module.DEFAULTS, **{k: v for k, v in objective_cfg.items() if k != "name"}}
    check_schema(name, schema)
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token, which ends every response")
    objective = module.build(opts, tokenizer, seed, schema)
    if tokenizer.prompt_template is None:
        return objective
    # config.data.prompt_template="chat_template": the examples render prompts through the model's chat
    # template (`examples.prompt_template`); generation and the saved model must prompt the same way.
    if objective.prompt_template != examples.PROMPT_TEMPLATE or objective.prompt_fn is not None:
        raise _no_chat_template(name)
    return dataclasses.replace(objective, prompt_template=tokenizer.prompt_template)


def check_chat_template(objective_cfg: Mapping[str, Any]) -> None:
    """config.data.prompt_template="chat_template" trains only objectives whose prompt is the plain
    prompt (`examples.PROMPT_TEMPLATE`); checked before a run writes anything (`make` checks again)."""
    if is_rl(objective_cfg) or prompt_template(objective_cfg) != examples.PROMPT_TEMPLATE:
        raise _no_chat_template(_name(objective_cfg))


def _no_chat_template(name: str) -> ValueError:
    return ValueError(
        f"config.data.prompt_template='chat_template' renders prompts through the model's own chat "
        f"template, which objective {name!r} cannot use: it puts its own markers into the prompt "
        f"(CoH's feedback phrases, an edit chain's draft) or takes its prompts from its policy. Train it "
        f"with data.prompt_template='' (jaxalign's own prompt format), or use sft, sft_pos_neg, "
        f"unlikelihood, dpo, reward or stable_alignment")


def check_schema(name: str, schema: str) -> None:
    """Text records train only ``sft``, labelled records only a ``reward`` model, group records only
    ``stable_alignment`` and its ``sft`` baselines; ``stable_alignment`` trains on group records only."""
    if schema not in SCHEMAS:
        raise ValueError(f"unknown record schema {schema!r}; known: {', '.join(SCHEMAS)}")
    if schema == "text" and name != "sft":
        raise ValueError(f"objective {name!r} needs preference records; text records train only with 'sft'")
    if schema == "labelled" and name != "reward":
        raise ValueError(f"objective {name!r} needs preference records; "
                         "labelled records train only a 'reward' model")
    if schema == "group" and name not in ("stable_alignment", "sft"):
        raise ValueError(f"objective {name!r} needs preference records; group records (prompt, responses, "
                         "ratings) train only with 'stable_alignment' or its baselines 'sft' "
                         "(objective.responses = 'best' or 'all')")
    if name == "stable_alignment" and schema != "group":
        raise ValueError(f"objective 'stable_alignment' needs group records (prompt, responses, ratings; "
                         f"data.schema = 'group'), got {schema} records")
