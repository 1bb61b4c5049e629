"""The judge of the prompt template: every test case goes to the model under test with
system_prompt.md as the system message, and each reply is scored by the case's rules. Protected.

Prints, for the harness:
    pass_rate: <fraction of cases whose reply passes every one of its rules>
    prompt_words: <words in system_prompt.md>     errors: <cases with no reply from the endpoint>
and, before them, one line per case saying which rule failed.

The model under test is any OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, llama.cpp
server, OpenRouter...): `POST $OPENAI_BASE_URL/chat/completions` with the key in
$OPENAI_API_KEY (optional for a local server) and the model in $OPENAI_MODEL. Plain urllib,
no SDK: the experiment's environment needs nothing installed, and retries and timeouts stay
under this file's control. Temperature 0; a request is tried up to ATTEMPTS times on 429, 5xx
or a dropped connection. If the endpoint fails for more than half of the cases the run fails
(exit 2): an unreachable model must not look like a bad prompt.

Rules (cases.jsonl, one case per line: {"id", "input", "rules": [...]}), each with one check
and an optional "field" (a key of the JSON object the reply must be; without it the check
reads the whole reply):
    {"json": true}                       the reply is a JSON object (a ``` fence around it is allowed)
    {"field": F, "equals": V}            equal (strings: ignoring case and surrounding space)
    {"field": F, "one_of": [V, ...]}     equal to one of them
    {"field": F, "contains": S}          contains S (ignoring case); "contains_any": [S, ...]
    {"field": F, "not_contains": [S, ...]}   contains none of them (ignoring case)
    {"field": F, "regex": R}             re.search(R) finds a match
    {"field": F, "max_words": N}         at most N words
"""

import concurrent.futures
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BASE_URL = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
API_KEY = os.environ.get("OPENAI_API_KEY", "")
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TEMPERATURE = 0.0
MAX_TOKENS = 400
ATTEMPTS = 4
PARALLEL = 4
TIMEOUT_S = 60.0
CHECKS = ("json", "equals", "one_of", "contains", "contains_any", "not_contains", "regex", "max_words")


class EndpointError(Exception):
    pass


def chat(system, user):
    """The model's reply to `user` under the system prompt `system`."""
    body = json.dumps({"model": MODEL, "temperature": TEMPERATURE, "max_tokens": MAX_TOKENS,
                       "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
    headers = {"Content-Type": "application/json"}
    if API_KEY:
        headers["Authorization"] = f"Bearer {API_KEY}"
    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
        req = urllib.request.Request(f"{BASE_URL}/chat/completions", data=body.encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                data = json.loads(resp.read().decode("utf-8"))
            return data["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200].decode('utf-8', 'replace')}"
            if e.code != 429 and e.code < 500:
                break  # a bad request or a bad key: retrying will not help
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
            last = f"{type(e).__name__}: {e}"
    raise EndpointError(last)


def load_cases():
    cases = []
    for n, line in enumerate((ROOT / "cases.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        case = json.loads(line)
        for rule in case["rules"]:
            checks = [k for k in rule if k != "field"]
            if len(checks) != 1 or checks[0] not in CHECKS:
                sys.exit(f"cases.jsonl line {n}: a rule needs exactly one of {', '.join(CHECKS)}, got {rule}")
        cases.append(case)
    return cases


def parse_json(reply):
    text = reply.strip()
    fenced = re.match(r"^```[a-zA-Z]*\s*\n(.*)\n```$", text, re.S)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def failure(rule, reply, obj):
    """Why `reply` breaks `rule`, or None."""
    if "json" in rule:
        return None if (obj is not None) == bool(rule["json"]) else "the reply is not a JSON object"
    field = rule.get("field")
    if field is not None:
        if obj is None:
            return f"{field}: the reply is not a JSON object"
        if field not in obj:
            return f"{field}: missing"
    value = obj[field] if field is not None else reply
    text = value if isinstance(value, str) else json.dumps(value)
    low = text.lower()
    where = field or "reply"
    if "equals" in rule:
        want = rule["equals"]
        same = (isinstance(value, str) and isinstance(want, str) and value.strip().lower() == want.lower()) or \
            value == want
        return None if same else f"{where}: expected {want!r}, got {value!r}"
    if "one_of" in rule:
        ok = any(value == w or (isinstance(value, str) and isinstance(w, str) and value.strip().lower() == w.lower())
                 for w in rule["one_of"])
        return None if ok else f"{where}: {value!r} is not one of {rule['one_of']}"
    if "contains" in rule:
        return None if rule["contains"].lower() in low else f"{where}: does not mention {rule['contains']!r}"
    if "contains_any" in rule:
        ok = any(s.lower() in low for s in rule["contains_any"])
        return None if ok else f"{where}: mentions none of {rule['contains_any']}"
    if "not_contains" in rule:
        bad = [s for s in rule["not_contains"] if s.lower() in low]
        return f"{where}: must not say {bad[0]!r}" if bad else None
    if "regex" in rule:
        return None if re.search(rule["regex"], text) else f"{where}: does not match /{rule['regex']}/"
    words = len(text.split())
    return None if words <= rule["max_words"] else f"{where}: {words} words, more than {rule['max_words']}"


def main():
    if not API_KEY and not re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])[:/]", BASE_URL + "/"):
        print(f"error: OPENAI_API_KEY is not set for {BASE_URL}: export it, and keep OPENAI_API_KEY in "
              "experiment.env_allow so the harness passes it to the run", file=sys.stderr)
        return 2
    system = (ROOT / "system_prompt.md").read_text(encoding="utf-8")
    cases = load_cases()
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        replies = list(pool.map(lambda c: _ask(system, c["input"]), cases))
    passed, errors = 0, []
    for case, (reply, error) in zip(cases, replies):
        if error is not None:
            errors.append(error)
            print(f"case {case['id']}: ERROR ({error})")
            continue
        obj = parse_json(reply)
        failed = [f for rule in case["rules"] if (f := failure(rule, reply, obj))]
        passed += not failed
        print(f"case {case['id']}: {'pass' if not failed else 'FAIL (' + failed[0] + ')'}")
    if len(errors) * 2 > len(cases):
        print(f"error: the endpoint {BASE_URL} failed for {len(errors)} of {len(cases)} cases "
              f"(last: {errors[-1]})", file=sys.stderr)
        return 2
    print(f"pass_rate: {passed / len(cases):.4f}")
    print(f"prompt_words: {len(system.split())}")
    print(f"errors: {len(errors)}")
    return 0


def _ask(system, user):
    try:
        return chat(system, user), None
    except EndpointError as e:
        return None, str(e)


if __name__ == "__main__":
    sys.exit(main())
