"""The gateway's web chat page (GET /chat on the gRPC port) in headless
Chromium: a user pastes a token, sends a message, and reads the coach's
reply as it streams in over gRPC-Web; the exchange is then in the
transcript, read back over plain gRPC.

Needs Debian's chromium and chromium-driver (deploy/local/test installs
them); a screenshot goes to .tp/chat.png."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import REPO_ROOT, bearer

PROMPT = "My staff engineers keep getting pulled into incidents. What should I do?"


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the web chat test needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # This machine's network is closed: without the background-networking
    # flags Chromium keeps trying Google's hosts.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def page_url() -> str:
    return f"http://{os.environ['TP_GATEWAY_ADDR']}/chat"


def test_web_chat_streams_a_reply_over_grpc_web(api, stubs, new_member, browser):
    _tenant, _member, token = new_member()
    browser.get(page_url())
    assert browser.title.startswith("Thoughtpartner")
    browser.find_element(By.ID, "token").send_keys(token)
    # Count the changes made to the reply's text, to see it arrive in
    # pieces (one record per change, however the browser batches them).
    browser.execute_script(
        """
        window.tpUpdates = 0;
        new MutationObserver((records) => {
          for (const record of records) {
            const turn = record.target.closest ? record.target.closest('.turn.assistant')
                                               : record.target.parentElement?.closest('.turn.assistant');
            if (turn && record.type !== 'attributes') window.tpUpdates += 1;
          }
        }).observe(document.getElementById('transcript'),
                   {subtree: true, childList: true, characterData: true});
        """
    )
    browser.find_element(By.ID, "message").send_keys(PROMPT)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".turn.assistant[data-complete='true']")
        or "error" in d.find_element(By.ID, "status").get_attribute("class")
    )
    status = browser.find_element(By.ID, "status")
    assert "error" not in status.get_attribute("class"), status.text
    (REPO_ROOT / ".tp").mkdir(exist_ok=True)
    browser.save_screenshot(str(REPO_ROOT / ".tp" / "chat.png"))

    turns = browser.find_elements(By.CSS_SELECTOR, ".turn")
    assert [t.get_attribute("class").split()[1] for t in turns] == ["user", "assistant"]
    assert turns[0].text == PROMPT
    reply = turns[1].text
    assert "?" in reply, reply  # it asks before it advises
    assert browser.execute_script("return window.tpUpdates") >= 2, "the reply did not stream"

    conversation_id = browser.find_element(By.ID, "conversation").text.removeprefix("conversation ")
    uuid.UUID(conversation_id)
    stored = stubs.conversations.ListMessages(
        api.conversation_pb2.ListMessagesRequest(conversation_id=conversation_id),
        metadata=bearer(token),
        timeout=30,
    ).messages
    assert [m.content for m in stored] == [PROMPT, stored[1].content]
    assert stored[1].content.strip() == reply.strip()


def test_web_chat_shows_the_grpc_error(browser):
    browser.get(page_url())
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "message").send_keys(PROMPT)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 15).until(
        lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class")
    )
    assert browser.find_element(By.ID, "status").text.startswith("UNAUTHENTICATED: ")
    assert browser.find_elements(By.CSS_SELECTOR, ".turn") == []
