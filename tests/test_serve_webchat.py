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

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; or set LMSTACK_CHROMIUM "
                             "to a Chrome/Chromium binary): the web chat test needs a real browser")


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
