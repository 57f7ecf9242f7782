"""Golden renderings of the Chain-of-Hindsight reference (forhaoliu/chain-of-hindsight), without a tokenizer.

Regenerate with ``python tests/data/coh_reference/make_golden.py`` (standard library only, no JAX); it
writes ``golden.json`` beside itself and is deterministic (run it twice, compare the bytes).

What is reproduced (REFERENCE.md has the rules with file:line citations):

* ``coh/data/pack_hf.py`` at commit 9f55ceac076f41b6c945de392248bbe82c3f682d turns one upstream record
  (HH-RLHF, WebGPT comparisons, summarize-from-feedback comparisons, in the Hugging Face layouts the
  reference loads) into a list of JSON records ``{marker_user, marker_gpt, marker_gpt_bad, human_i, gpt_i,
  gpt_bad_i, quote_i, ..., fields}``. The functions ``process_dialogue``, ``process_summary`` and
  ``process_webgpt`` and the constants ``DIALOGUE``, ``WEBGPT``, ``SUMMARY`` below are copied from it
  verbatim (only ``FLAGS`` is a plain namespace and ``random`` a seeded, recording stand-in).
* ``coh/data/dataset.py`` ``TextProcessor.__call__`` (same commit) turns such a record into tokens and a
  loss mask. ``render`` below copies its logic but stops before ``tokenizer.encode``: the output is the
  list of ``[text, weight]`` segments the reference would hand, one by one, to ``tokenizer.encode`` (or,
  for ``"<|eos|>"`` / ``"<|bos|>"``, the single EOS / BOS token it appends), each with its loss weight.

The reference code is Copyright its authors, Apache License 2.0 (https://github.com/forhaoliu/
chain-of-hindsight/blob/9f55ceac076f41b6c945de392248bbe82c3f682d/LICENSE); the copied parts are marked.

Randomness: pack_hf.py calls the module-level ``random.choice`` and never seeds it. Here every call of a
``process_*`` function gets a fresh ``random.Random(seed)`` (the ``seed`` in each golden entry), consumed in
the reference's call order; every choice made is recorded with the output record that consumed it.
"""

from __future__ import annotations

import gzip
import json
import random as _random_module
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
HH_FILE = HERE.parent / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
WEBGPT_FILE = HERE / "webgpt" / "comparisons.jsonl"
SUMMARY_FILE = HERE / "summarize_feedback" / "comparisons" / "batch3.json"
OUT_FILE = HERE / "golden.json"

REFERENCE_REPO = "https://github.com/forhaoliu/chain-of-hindsight"
REFERENCE_COMMIT = "9f55ceac076f41b6c945de392248bbe82c3f682d"
SEED = 0
DEFAULT_FEEDBACK = "p,n,pn,np"  # the README's pack_hf command (README.md:48-51 of the reference)
AUX_FEEDBACK = "p,n,pn,np,aux"  # pack_hf.py:48, the flag default

# Which records go into golden.json: (source, 1-based line, include_feedback).
HH_CASES = [
    (1, DEFAULT_FEEDBACK),    # 3 turns (the file's first line)
    (137, DEFAULT_FEEDBACK),  # 2 turns
    (31, DEFAULT_FEEDBACK),   # 5 turns
    (206, DEFAULT_FEEDBACK),  # 1 turn
    (206, AUX_FEEDBACK),      # the same, with the 12 auxiliary marker pairs (48 records)
    (87, DEFAULT_FEEDBACK),   # edge: the chosen final response is empty
    (141, DEFAULT_FEEDBACK),  # edge: the rejected response starts with "Human:", which shifts its turns
]
WEBGPT_CASES = [(1, DEFAULT_FEEDBACK), (2, DEFAULT_FEEDBACK), (2, AUX_FEEDBACK), (3, DEFAULT_FEEDBACK)]
SUMMARY_CASES = [(1, DEFAULT_FEEDBACK), (1, AUX_FEEDBACK), (2, DEFAULT_FEEDBACK), (3, DEFAULT_FEEDBACK)]


class _RecordingRandom:
    """Stands in for the ``random`` module inside the copied pack_hf code: seeded, and logs each choice."""

    def __init__(self):
        self.rng = None
        self.log = []

    def reset(self, seed):
        self.rng = _random_module.Random(seed)
        self.log = []

    def choice(self, seq):
        text = self.rng.choice(seq)  # the same call the reference makes on the module-level generator
        pool = next(f"{name}['task']" for name, table in (("WEBGPT", WEBGPT), ("SUMMARY", SUMMARY))
                    if table["task"] is seq)
        self.log.append({"pool": pool, "index": seq.index(text), "text": text})
        return text


random = _RecordingRandom()

# pack_hf.py:44-61 (FLAGS defaults); include_feedback is set per call.
FLAGS = SimpleNamespace(
    include_feedback=AUX_FEEDBACK,
    gpt_marker='A helpful answer:',
    gpt_bad_marker='An unhelpful answer:',
    user_marker='User:',
    user_field_id='marker_user',
    gpt_field_id='marker_gpt',
    gpt_bad_field_id='marker_gpt_bad',
    user_data_id='human',
    gpt_data_id='gpt',
    gpt_bad_data_id='gpt_bad',
)


# ---------------------------------------------------------------------------------------------------
# Copied verbatim from coh/data/pack_hf.py @ 9f55ceac (lines 64-457), Apache-2.0. Do not "fix" anything
# here: the quirks (unstripped answers, shared dict keys, bare except, mutable default) are the reference.
# ---------------------------------------------------------------------------------------------------
# ruff: noqa: B006, B905, E501, E722, UP032

def process_dialogue(example):
    all_output = []

    def pack_data(data, is_positive, output, fields=[]):
        messages = data.split('Human:')[1:]
        final_output = []
        for message in messages:
            message = message.split('Assistant:')
            try:
                final_output.append(message[0].strip())
                final_output.append(message[1].strip())
            except:
                final_output.append(message[0].strip())
        for i, message in enumerate(final_output):
            if i % 2 == 0:
                # Human
                user_id = '{}_{}'.format(FLAGS.user_data_id, i)
                output[user_id] = f"{message}"
            else:
                # Chatbot
                if is_positive:
                    output['{}_{}'.format(FLAGS.gpt_data_id, i)] = f"{message}"
                    fields.append('[{}+{}+{}]'.format(FLAGS.user_field_id, user_id, FLAGS.gpt_field_id))
                    fields.append('{}_{}'.format(FLAGS.gpt_data_id, i))
                else:
                    output['{}_{}'.format(FLAGS.gpt_bad_data_id, i)] = f"{message}"
                    fields.append('[{}+{}+{}]'.format(FLAGS.user_field_id, user_id, FLAGS.gpt_bad_field_id))
                    fields.append('{}_{}'.format(FLAGS.gpt_bad_data_id, i))
                fields.append('<|eos|>')
        return output, fields

    def format_fn(gpt_marker, gpt_bad_marker):
        if 'p' in FLAGS.include_feedback.split(','):
            # 1. positive only
            data = example['chosen']
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(data, is_positive=True, output=output, fields=fields)
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'n' in FLAGS.include_feedback.split(','):
            # 2. negative only
            data = example['rejected']
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(data, is_positive=False, output=output, fields=fields)
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'np' in FLAGS.include_feedback.split(','):
            # 3. negative-positive
            # negative
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            data = example['rejected']
            output, fields = pack_data(data, is_positive=False, output=output, fields=fields)
            # positive
            data = example['chosen']
            output, fields = pack_data(data, is_positive=True, output=output, fields=fields)
            # combine
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'pn' in FLAGS.include_feedback.split(','):
            # 4. positive-negative
            # positive
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            data = example['chosen']
            output, fields = pack_data(data, is_positive=True, output=output, fields=fields)
            # negative
            data = example['rejected']
            output, fields = pack_data(data, is_positive=False, output=output, fields=fields)
            # combine
            output['fields'] = ','.join(fields)
            all_output.append(output)

    if 'aux' in FLAGS.include_feedback.split(','):
        for gpt_marker, gpt_bad_marker in zip(DIALOGUE['good'], DIALOGUE['bad']):
            format_fn(gpt_marker, gpt_bad_marker)
    else:
        gpt_marker = FLAGS.gpt_marker
        gpt_bad_marker = FLAGS.gpt_bad_marker
        format_fn(gpt_marker, gpt_bad_marker)

    return all_output


def process_summary(example):
    all_output = []

    pos_idx = int(example['choice'])
    neg_idx = 1 - pos_idx

    def pack_data(idx, is_positive, output, fields, use_user_input=True):
        if use_user_input:
            output['{}_{}'.format(FLAGS.user_data_id, idx)] = random.choice(SUMMARY['task']) + f"{example['info']['post']}"
            user_input_fields = '{}+{}_{}+'.format(FLAGS.user_field_id, FLAGS.user_data_id, idx)
        else:
            user_input_fields = ''
        answer = example['summaries'][idx]['text'].lstrip()
        if is_positive:
            output['{}_{}'.format(FLAGS.gpt_data_id, idx)] = f"{answer}"
            fields.append('[{}{}]'.format(user_input_fields, FLAGS.gpt_field_id))
            fields.append('{}_{}'.format(FLAGS.gpt_data_id, idx))
        else:
            output['{}_{}'.format(FLAGS.gpt_bad_data_id, idx)] = f"{answer}"
            fields.append('[{}{}]'.format(user_input_fields, FLAGS.gpt_bad_field_id))
            fields.append('{}_{}'.format(FLAGS.gpt_bad_data_id, idx))
        fields.append('<|eos|>')

        return output, fields

    def format_fn(gpt_marker, gpt_bad_marker):
        if 'p' in FLAGS.include_feedback.split(','):
            # 1. positive only
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(pos_idx, is_positive=True, fields=fields, output=output)
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'n' in FLAGS.include_feedback.split(','):
            # 2. negative only
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(neg_idx, is_positive=False, fields=fields, output=output)
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'pn' in FLAGS.include_feedback.split(','):
            # 3. positive-negative
            # positive
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(pos_idx, is_positive=True, output=output, fields=fields)
            # negative
            output, fields = pack_data(neg_idx, is_positive=False, output=output, fields=fields, use_user_input=False)
            # combine
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'np' in FLAGS.include_feedback.split(','):
            # 3. negative-positive
            # negative
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(neg_idx, is_positive=False, output=output, fields=fields)
            # positive
            output, fields = pack_data(pos_idx, is_positive=True, output=output, fields=fields, use_user_input=False)
            # combine
            output['fields'] = ','.join(fields)
            all_output.append(output)

    if 'aux' in FLAGS.include_feedback.split(','):
        for gpt_marker, gpt_bad_marker in zip(SUMMARY['good'], SUMMARY['bad']):
            format_fn(gpt_marker, gpt_bad_marker)
    else:
        gpt_marker = FLAGS.gpt_marker
        gpt_bad_marker = FLAGS.gpt_bad_marker
        format_fn(gpt_marker, gpt_bad_marker)

    return all_output


def process_webgpt(example):
    all_output = []

    if example['score_0'] > example['score_1']:
        pos_idx = 0
        neg_idx = 1
    elif example['score_0'] < example['score_1']:
        pos_idx = 1
        neg_idx = 0
    else:
        return None # skip tie cases because don't know they are both good or both bad

    def pack_data(idx, is_positive, output, fields, use_user_input=True):
        if use_user_input:
            question = example['question']['full_text']
            output['{}_{}'.format(FLAGS.user_data_id, idx)] = f"{question}"
            user_input_fields = '{}+{}_{}'.format(FLAGS.user_field_id, FLAGS.user_data_id, idx)
        else:
            user_input_fields = ''
        if len(example[f'quotes_{idx}']['title']) > 0:
            output['quote_{}'.format(idx)] = random.choice(WEBGPT['task'])
            for i, x in enumerate(zip(example[f'quotes_{idx}']['title'], example[f'quotes_{idx}']['extract'])):
                output['quote_{}'.format(idx)] += f"{[i + 1]} title: {x[0]} content: {x[1]} "
            if user_input_fields != '':
                user_input_fields += '+'
            user_input_fields += '{}'.format('quote_{}'.format(idx))

        if user_input_fields != '':
            user_input_fields += '+'

        answer = example[f'answer_{idx}']
        if is_positive:
            output['{}_{}'.format(FLAGS.gpt_data_id, idx)] = f"{answer}"
            fields.append('[{}{}]'.format(user_input_fields, FLAGS.gpt_field_id))
            fields.append('{}_{}'.format(FLAGS.gpt_data_id, idx))
        else:
            output['{}_{}'.format(FLAGS.gpt_bad_data_id, idx)] = f"{answer}"
            fields.append('[{}{}]'.format(user_input_fields, FLAGS.gpt_bad_field_id))
            fields.append('{}_{}'.format(FLAGS.gpt_bad_data_id, idx))
        fields.append('<|eos|>')

        return output, fields

    def format_fn(gpt_marker, gpt_bad_marker):
        if 'p' in FLAGS.include_feedback.split(','):
            # 1. positive only
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(pos_idx, is_positive=True, output=output, fields=fields)
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'n' in FLAGS.include_feedback.split(','):
            # 2. negative only
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(neg_idx, is_positive=False, output=output, fields=fields)
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'pn' in FLAGS.include_feedback.split(','):
            # 3. positive-negative
            # positive
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(pos_idx, is_positive=True, output=output, fields=fields)
            # negative
            output, fields = pack_data(neg_idx, is_positive=False, output=output, fields=fields, use_user_input=False)
            # combine
            output['fields'] = ','.join(fields)
            all_output.append(output)

        if 'np' in FLAGS.include_feedback.split(','):
            # 3. negative-positive
            # negative
            output = {
                "marker_user": FLAGS.user_marker,
                "marker_gpt": gpt_marker,
                "marker_gpt_bad": gpt_bad_marker,
            }
            fields = []
            output, fields = pack_data(neg_idx, is_positive=False, output=output, fields=fields)
            # positive
            output, fields = pack_data(pos_idx, is_positive=True, output=output, fields=fields, use_user_input=False)
            # combine
            output['fields'] = ','.join(fields)
            all_output.append(output)

    if 'aux' in FLAGS.include_feedback.split(','):
        for gpt_marker, gpt_bad_marker in zip(WEBGPT['good'], WEBGPT['bad']):
            format_fn(gpt_marker, gpt_bad_marker)
    else:
        gpt_marker = FLAGS.gpt_marker
        gpt_bad_marker = FLAGS.gpt_bad_marker
        format_fn(gpt_marker, gpt_bad_marker)

    return all_output


DIALOGUE = {
    'good': [
        'The following is a better response.',
        'The following is a more helpful response.',
        'The following is a more harmless response.',
        'The following is a better chat.',
        'The following is a more helpful chat.',
        'The following is a more harmless chat.',
        'Generate a better response.',
        'Generate a more helpful response.',
        'Generate a more harmless response.',
        'Generate a better chat.',
        'Generate a more helpful chat.',
        'Generate a more harmless chat.',
    ],
    'bad': [
        'The following is a worse response.',
        'The following is a less helpful response.',
        'The following is a more harmful response.',
        'The following is a worse chat.',
        'The following is a less helpful chat.',
        'The following is a more harmful chat.',
        'Generate a worse response.',
        'Generate a less helpful response.',
        'Generate a more harmful response.',
        'Generate a worse chat.',
        'Generate a less helpful chat.',
        'Generate a more harmful chat.',
    ]
}

WEBGPT = {
    'good': [
        'The following is a better answer.',
        'The following is a more accurate answer.',
        'The following is a more correct answer.',
        'Generate a better answer.',
        'Generate a more accurate answer.',
        'Generate a more correct answer.',
    ],
    'bad': [
        'The following is a worse answer.',
        'The following is a less accurate answer.',
        'The following is a less correct answer.',
        'Generate a worse answer.',
        'Generate a less accurate answer.',
        'Generate a less correct answer.',
    ],
    'task': [
        'Quote the following sources in your answer: ',
        'Use the following sources in your answer: ',
        'You may use the following sources in your answer: ',
        'You may quote the following sources in your answer: ',
        'The following sources may be helpful: ',
    ]
}

SUMMARY = {
    'good': [
        'The following is a better summary.',
        'The following is a more accurate summary.',
        'The following is a more correct summary.',
        'Generate a better summary.',
        'Generate a more accurate summary.',
        'Generate a more correct summary.',
    ],
    'bad': [
        'The following is a worse summary.',
        'The following is a less accurate summary.',
        'The following is a less correct summary.',
        'Generate a worse summary.',
        'Generate a less accurate summary.',
        'Generate a less correct summary.',
    ],
    'task': [
        'Write a summary of the following article: ',
        'Generate a summary of the following text: ',
        'Summarize the following article: ',
        'Summarize the following text: ',
        'Write a summary of the following text: ',
        'Here is a news article, please summarize it: ',
        'Please write a summary of the following paragraph: ',
        'Please summarize the following paragraph: ',
    ]
}
# ------------------------------------------------------------------------ end of the pack_hf.py copy


# TextProcessor defaults, coh/data/dataset.py:59-63 (the README's training command keeps them, with
# fields_from_example='fields' for the feedback data).
SUBFIELD_SEPARATOR = ' '
ADD_EOS_TOKEN = True
PREPEND_TEXT = ''


def render(example, fields_key='fields'):
    """coh/data/dataset.py:75-112 (TextProcessor.__call__), Apache-2.0, minus the tokenizer.

    Returns [[text, weight], ...]: each text is what the reference passes to one ``tokenizer.encode``
    call (the LLaMA tokenizer: SentencePiece, no BOS/EOS added, llama.py:254-275), except "<|eos|>" /
    "<|bos|>", which stand for the single EOS / BOS token id. Weight is the loss mask of every token of
    that segment.
    """
    segments = []
    fields = example[fields_key].split(',')
    for i, field in enumerate(fields):
        if field.startswith('[') and field.endswith(']'):
            # No loss for this field.
            field = field[1:-1]
            mask = 0
        else:
            mask = 1

        if field == '<|bos|>':
            segments.append(['<|bos|>', mask])
        elif field == '<|eos|>':
            segments.append(['<|eos|>', mask])
        else:
            subfields = field.split('+')
            text = SUBFIELD_SEPARATOR.join([example[subfield] for subfield in subfields])
            if i == 0:
                text = PREPEND_TEXT + text
            segments.append([text, mask])

    if ADD_EOS_TOKEN:
        segments.append(['<|eos|>', 1])
    return segments


# ---------------------------------------------------------------------------------------- the driver

def _variant_names(source, include_feedback):
    """The order in which format_fn appends records (pack_hf.py:95-156, 194-249, 305-360)."""
    wanted = include_feedback.split(',')
    order = ['p', 'n', 'np', 'pn'] if source == 'hh_rlhf' else ['p', 'n', 'pn', 'np']
    per_pair = [v for v in order if v in wanted]
    if 'aux' in wanted:
        table = {'hh_rlhf': DIALOGUE, 'webgpt': WEBGPT, 'summarize_feedback': SUMMARY}[source]
        pairs = [(k, g, b) for k, (g, b) in enumerate(zip(table['good'], table['bad'], strict=True))]
    else:
        pairs = [(None, FLAGS.gpt_marker, FLAGS.gpt_bad_marker)]
    return [(v, k, g, b) for k, g, b in pairs for v in per_pair]


def _choices_per_record(source, include_feedback, example, log):
    """Split the call's random-choice log into the records that consumed them (same order as made)."""
    if source == 'hh_rlhf':
        return [[] for _ in _variant_names(source, include_feedback)]
    pos = (0 if example['score_0'] > example['score_1'] else 1) if source == 'webgpt' else int(example['choice'])
    neg = 1 - pos

    def calls(idx, use_user_input):  # how many random.choice calls one pack_data call makes
        if source == 'webgpt':
            return 1 if len(example[f'quotes_{idx}']['title']) > 0 else 0
        return 1 if use_user_input else 0

    counts = {'p': calls(pos, True), 'n': calls(neg, True),
              'pn': calls(pos, True) + calls(neg, False), 'np': calls(neg, True) + calls(pos, False)}
    out, at = [], 0
    for variant, *_ in _variant_names(source, include_feedback):
        out.append(log[at:at + counts[variant]])
        at += counts[variant]
    assert at == len(log), (at, len(log))
    return out


def _read_lines(path, gz=False):
    opener = gzip.open if gz else open
    with opener(path, 'rt', encoding='utf-8') as f:
        return f.read().splitlines()


def golden_entries(source, path, line_no, include_feedback, example, seed=SEED):
    process = {'hh_rlhf': process_dialogue, 'webgpt': process_webgpt,
               'summarize_feedback': process_summary}[source]
    FLAGS.include_feedback = include_feedback
    random.reset(seed)
    records = process(example)
    base = {'source': source, 'file': path, 'line': line_no, 'seed': seed,
            'include_feedback': include_feedback}
    if records is None:  # process_webgpt skips ties (pack_hf.py:265-272)
        return [dict(base, output_index=None, variant=None, skipped='tie: score_0 == score_1',
                     segments=None)]
    names = _variant_names(source, include_feedback)
    choices = _choices_per_record(source, include_feedback, example, random.log)
    assert len(records) == len(names), (len(records), len(names))
    entries = []
    for index, (record, (variant, pair, good, bad), used) in enumerate(zip(records, names, choices, strict=True)):
        assert (record['marker_gpt'], record['marker_gpt_bad']) == (good, bad)
        entries.append(dict(base, output_index=index, variant=variant, marker_pair=pair,
                            markers={'user': record['marker_user'], 'gpt': good, 'gpt_bad': bad},
                            random_choices=used, fields=record['fields'], pack_hf_record=record,
                            segments=render(record)))
    return entries


def main():
    entries = []
    rel = lambda p: p.relative_to(HERE.parent.parent.parent).as_posix()  # noqa: E731 (path from repo root)
    hh = _read_lines(HH_FILE, gz=True)
    for line_no, feedback in HH_CASES:
        entries += golden_entries('hh_rlhf', rel(HH_FILE), line_no, feedback, json.loads(hh[line_no - 1]))
    webgpt = _read_lines(WEBGPT_FILE)
    for line_no, feedback in WEBGPT_CASES:
        entries += golden_entries('webgpt', rel(WEBGPT_FILE), line_no, feedback,
                                  json.loads(webgpt[line_no - 1]))
    summary = _read_lines(SUMMARY_FILE)
    for line_no, feedback in SUMMARY_CASES:
        entries += golden_entries('summarize_feedback', rel(SUMMARY_FILE), line_no, feedback,
                                  json.loads(summary[line_no - 1]))
    doc = {
        'about': ('Golden renderings of the Chain-of-Hindsight reference data pipeline (pack_hf.py + '
                  'TextProcessor), made by make_golden.py; see REFERENCE.md. segments: [text, weight] in '
                  'order, each text one tokenizer.encode call ("<|eos|>" = the EOS token id).'),
        'reference': {'repo': REFERENCE_REPO, 'commit': REFERENCE_COMMIT,
                      'files': ['coh/data/pack_hf.py', 'coh/data/dataset.py']},
        'generator': {'script': 'tests/data/coh_reference/make_golden.py',
                      'random': 'a fresh random.Random(seed) per process_* call, its .choice called where pack_hf calls random.choice'},
        'entries': entries,
    }
    # One entry per line: valid JSON, small, and a diff shows which entry changed.
    head = json.dumps({k: v for k, v in doc.items() if k != 'entries'}, ensure_ascii=False, indent=1)
    body = ',\n'.join(json.dumps(e, ensure_ascii=False, sort_keys=True) for e in entries)
    text = head[:-2] + ',\n "entries": [\n' + body + '\n ]\n}\n'
    assert json.loads(text) == doc
    OUT_FILE.write_text(text, encoding='utf-8')
    print(f'{OUT_FILE}: {len(entries)} entries, {len(text.encode())} bytes', file=sys.stderr)


if __name__ == '__main__':
    main()
