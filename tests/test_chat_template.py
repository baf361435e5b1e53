"""A model's chat template is rendered as transformers renders it, with bounded work: a hostile one
stops within seconds, in one line naming its file, having taken no memory to speak of."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from memecap.models.vlm.template import ChatTemplate, ChatTemplateError, render_chat
from memecap.models.vlm.tiny import LLAVA_TEMPLATE, QWEN_SPECIAL, QWEN_TEMPLATE, SMOLVLM_TEMPLATE, tiny_tokenizer
from tests.helpers import one_image_folder

# The features published templates use, in the layout they are written in (indented tags and line
# breaks, which trim_blocks / lstrip_blocks shape): namespaces, loop variables, tests, filters,
# string methods, `%` and `.format`, `~`, slices, dict(), the generation tag, raise_exception.
RICH_TEMPLATE = """
{%- set image_count = namespace(value=0) -%}
{%- if messages[0]['role'] != 'system' %}
    {{- (bos_token or '') ~ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    <|im_start|>{{ message.role }}
    {% if message['content'] is string %}
        {{- message['content'] | trim }}
    {%- else %}
        {%- for content in message['content'] %}
            {%- if content['type'] == 'image' or 'image' in content %}
                {%- set image_count.value = image_count.value + 1 %}
                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif 'text' in content %}
                {{- content['text'].replace('\\r', '').strip() }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {%- if message.role == 'assistant' %}{% generation %}{{ '' }}{% endgeneration %}{% endif %}
<|im_end|>
{{ '%s of %d' % (loop.index, loop.length) }} {{ '{}/{}'.format(loop.index0, loop.revindex) }}
{% endfor %}
{%- set last = messages[::-1][0] %}
{{- '' if last.role in ['user', 'assistant'] else raise_exception('roles must alternate') }}
{{- dict(n=image_count.value) | tojson }}{{ (tools or []) | tojson(indent=2) }}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""
USER = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Опиши мем\r подробно "}]}]
CONVERSATION = USER + [{"role": "assistant", "content": [{"type": "text", "text": "На фото кот."}]}]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(["Опиши мем подробно", "На фото кот."], QWEN_SPECIAL, "<|im_end|>", QWEN_TEMPLATE)


@pytest.mark.parametrize("template", [QWEN_TEMPLATE, SMOLVLM_TEMPLATE, LLAVA_TEMPLATE, RICH_TEMPLATE])
@pytest.mark.parametrize("messages, generation", [(USER, True), (CONVERSATION, False)])
def test_rendered_as_transformers_renders_it(template, messages, generation, tokenizer):
    official = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation)
    assert render_chat(ChatTemplate(template, "t"), messages, tokenizer, add_generation_prompt=generation) == official


# Each renders, unbounded, for hours or into gigabytes; the limit each meets.
HOSTILE = {
    "nested_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "range of more than 10,000 items"),
    "nested_loops_in_range": ("{% for i in range(10000) %}{% for j in range(10000) %}{{ '' }}{% endfor %}{% endfor %}",
                              "ran past 2 s"),
    "long_string": ("{{ 'x' * 100000000 }}", "would make a value of more than 1,000,000 characters"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                 "{{ ns.s }}", "would make a value of more than 1,000,000 characters"),
    "captured_output": ("{% set s = 'x' * 99999 %}{% set kept %}{% for i in range(10000) %}{{ s ~ i }}{% endfor %}"
                        "{% endset %}", "wrote more than 1,000,000 characters"),
    "padding": ("{{ '{:>1000000000}'.format(1) }}", "count or width of 1,000,000 or more"),
    "sandbox": ("{{ ''.__class__.__mro__ }}", "did what the sandbox forbids (access to attribute '__class__'"),
}
PROBE = """
import json, resource, sys, time
from memecap.models.vlm.template import ChatTemplate, ChatTemplateError, render_chat
user = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
render_chat(ChatTemplate("{% for m in messages %}{{ m.role }}{% endfor %}", "warm"), user, None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = {}
for name, text in json.loads(sys.argv[1]).items():
    start = time.monotonic()
    try:
        render_chat(ChatTemplate(text, f"model/{name}.jinja"), user, None)
        results[name] = [time.monotonic() - start, None]
    except ChatTemplateError as err:
        results[name] = [time.monotonic() - start, str(err)]
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"results": results, "grown_mib": grown}))
"""


def test_hostile_templates_stop_within_seconds_in_one_line_and_little_memory():
    templates = {name: text for name, (text, _) in HOSTILE.items()}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(templates)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for name, (_, limit) in HOSTILE.items():
        seconds, message = report["results"][name]
        assert message is not None, f"{name} rendered"
        assert message.startswith(f"model/{name}.jinja: the chat template ") and limit in message, message
        assert "\n" not in message and seconds < 4, (name, seconds)
    assert report["grown_mib"] < 200


def test_a_failing_template_names_its_file(tokenizer):
    with pytest.raises(ChatTemplateError, match=r"^processor/chat_template\.jinja: the chat template failed: "
                                                r"TemplateError: roles must alternate$"):
        render_chat(ChatTemplate("{{ raise_exception('roles must\nalternate') }}", "processor/chat_template.jinja"),
                    USER, tokenizer)


def test_an_export_whose_template_never_ends_is_refused_in_one_line(vlm_exports, synthetic_data, tmp_path):
    """Loading renders the template (to find where an answer ends): before, `memecap caption` hung there."""
    export = tmp_path / "export"
    shutil.copytree(vlm_exports["lora"], export)
    (export / "processor" / "chat_template.jinja").write_text(HOSTILE["nested_loops_in_range"][0], encoding="utf-8")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "memecap", "caption", str(one_image_folder(synthetic_data, tmp_path)),
                           "--model", str(export)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("memecap:")]
    assert said == [f"memecap: {export / 'processor' / 'chat_template.jinja'}: the chat template ran past 2 s "
                    "(memecap bounds a template's work); use the model's published template"], proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - start < 120
