"""The web chat page in real headless Chromium (Playwright): type a question, see the streamed answer.

Skipped where Chromium or the playwright package is missing; `apt-get install chromium` and
`pip install playwright` (the dev extra) enable it. LMSTACK_CHROMIUM may point at another binary.
"""

import os
import shutil

import pytest

from lmstack.generate import GenerationConfig, chat
from serve_helpers import LiveServer, make_state
from test_generate_common import small_tokenizer, tiny_model

CHROMIUM = os.environ.get("LMSTACK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; or set LMSTACK_CHROMIUM "
                             "to a Chrome/Chromium binary): the web chat test needs a real browser")


@needs_chromium
def test_page_streams_an_answer_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                                 "(pip install playwright)")
    tok = small_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=512)
    expected = chat(model, tok, [[{"role": "user", "content": "Who is Romeo?"}]],
                    GenerationConfig(max_new_tokens=40, ignore_eos=False))[0].text
    with LiveServer(make_state(model, tok)) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(srv.url + "/")
            page.select_option("#strategy", "greedy")
            page.fill("#max-tokens", "40")
            page.fill("#input", "Who is Romeo?")
            page.press("#input", "Enter")
            page.wait_for_function("document.getElementById('stats').textContent.includes('tokens/s')", timeout=60000)
            answer = page.inner_text(".msg.assistant")
            page.screenshot(path=str(tmp_path / "webchat.png"))
            assert (tmp_path / "webchat.png").stat().st_size > 1000
            assert answer.strip() == expected.strip()
            page.click("#new-chat")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()


NODE_HARNESS = r"""
// A minimal DOM: just what the page's script touches, so its real code runs against the live server.
const base = process.argv[process.argv.length - 1];
const script = require("fs").readFileSync(0, "utf8");
const elements = {};
function element(id) {
  const el = { id, value: "", textContent: "", className: "", dataset: {}, children: [], listeners: {},
               scrollTop: 0, scrollHeight: 0,
               addEventListener(kind, fn) { this.listeners[kind] = fn; },
               appendChild(child) { this.children.push(child); } };
  Object.defineProperty(el, "innerHTML", { set() { el.children = []; }, get() { return ""; } });
  return el;
}
for (const [id, value] of Object.entries({ temperature: "0.7", "top-p": "0.9", "max-tokens": "24",
                                           strategy: "greedy", system: "", "api-key": "", input: "" })) {
  elements[id] = element(id);
  elements[id].value = value;
}
globalThis.document = {
  getElementById(id) { return elements[id] || (elements[id] = element(id)); },
  createElement() { return element(null); },
};
const realFetch = globalThis.fetch;
globalThis.fetch = (url, opts) => realFetch(base + url, opts);
eval(script);
elements.input.value = "Who is Romeo?";
elements.bar.listeners.submit({ preventDefault() {} });
const started = Date.now();
(function wait() {
  const stats = document.getElementById("stats").textContent;
  const failed = document.getElementById("log").children.some((m) => m.className.includes("error"));
  if (stats.includes("tokens/s") || failed || Date.now() - started > 60000) {
    const log = document.getElementById("log").children;
    console.log(JSON.stringify({ stats, messages: log.map((m) => [m.className, m.textContent]) }));
    return;
  }
  setTimeout(wait, 20);
})();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the page's script cannot be run "
                                                          "without a browser")
def test_page_script_streams_an_answer_under_node():
    """Runs the page's own JavaScript (fetch + SSE parsing + tokens/s) in Node against the live server."""
    import json
    import re
    import subprocess

    from lmstack.serve.app import STATIC

    page = (STATIC / "chat.html").read_text(encoding="utf-8")
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    ids = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert ids <= set(re.findall(r'id="([\w-]+)"', page))  # every element the script uses exists
    tok = small_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=512)
    expected = chat(model, tok, [[{"role": "user", "content": "Who is Romeo?"}]], GenerationConfig(max_new_tokens=24))[0]
    with LiveServer(make_state(model, tok)) as srv:
        out = subprocess.run(["node", "-e", NODE_HARNESS, "--", srv.url], input=script, capture_output=True,
                             text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["messages"] == [["msg user", "Who is Romeo?"], ["msg assistant", expected.text]]
    assert f"{len(expected.token_ids)} tokens" in result["stats"] and "tokens/s" in result["stats"]
