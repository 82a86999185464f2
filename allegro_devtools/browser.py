"""The real ComfyUI front-end in headless Debian chromium, driven by playwright (never `playwright install`:
the browser comes from apt, see scripts/ensure_chromium.sh)."""
import contextlib
import os
import shutil
import time

import requests

CHROMIUM = os.environ.get("ALLEGRO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
VIEWPORT = {"width": 1920, "height": 1080}
# Front-end settings: no template gallery on first start; node text drawn even when zoomed out to fit.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2}


def chromium_available() -> bool:
    return shutil.which(CHROMIUM) is not None or os.path.isfile(CHROMIUM)


@contextlib.contextmanager
def front_end(server):
    """A page with the server's front-end loaded and every node definition registered."""
    from playwright.sync_api import sync_playwright
    requests.post(server.url + "/api/settings", json=QUIET_SETTINGS, timeout=10).raise_for_status()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url)
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph"
                                   " && Object.keys(LiteGraph.registered_node_types).length > 100", timeout=180_000)
            page.page_errors = errors
            yield page
        finally:
            browser.close()


def load_workflow(page, workflow: dict) -> list[str]:
    """app.loadGraphData(workflow); returns the node types the front-end does not know (missing nodes)."""
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    return page.evaluate("(types) => types.filter(t => !(t in LiteGraph.registered_node_types))",
                         sorted({node["type"] for node in workflow["nodes"]}))


def missing_nodes_dialog_text(page) -> str:
    """The text of the front-end's "missing nodes" dialog, or "" when it is not shown."""
    dialog = page.get_by_text("This workflow has missing nodes")
    return page.locator(".p-dialog").first.inner_text() if dialog.count() else ""


def graph_to_prompt(page) -> dict:
    """What the Run button would send to /prompt: app.graphToPrompt()'s output."""
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def screenshot_graph(page, path):
    """Dismiss dialogs and banners, fit the whole graph in view, and save a screenshot."""
    for _ in range(3):
        page.keyboard.press("Escape")
    # The "Introducing Nodes 2.0" banner along the top: its close button is the last one in it.
    banner_close = page.locator("button.absolute.right-4").first
    if banner_close.count() and banner_close.is_visible():
        banner_close.click()
    page.get_by_role("button", name="Fit View (.)").click()
    time.sleep(0.5)
    page.screenshot(path=str(path))


def node_library_tree(page, search: str) -> str:
    """Open the Node Library side bar, search, and return the text of the result tree."""
    page.get_by_role("button", name="Node Library (n)").click()
    box = page.get_by_placeholder("Search").first
    box.fill(search)
    page.wait_for_timeout(1500)
    return "\n".join(page.locator("[role=treeitem]").all_inner_texts())


def node_definition(page, node_type: str) -> dict | None:
    """The definition the front-end registered for a node type (what the node library and tooltips show)."""
    return page.evaluate("(t) => { const c = LiteGraph.registered_node_types[t];"
                         " return c && c.nodeData ? JSON.parse(JSON.stringify(c.nodeData)) : null; }", node_type)
