"""The real ComfyUI front-end in headless Debian chromium, driven by playwright (never `playwright install`:
the browser comes from apt, see scripts/ensure_chromium.sh)."""
import contextlib
import os
import shutil
import time
from pathlib import Path

import requests

CHROMIUM = os.environ.get("ALLEGRO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
VIEWPORT = {"width": 1920, "height": 1080}
README_PICTURE_WIDTH = 1400          # docs/images/*.jpg: the screenshot scaled to this width
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


def missing_nodes_report(page, timeout_ms: int = 10_000) -> str:
    """What the front-end tells the user about missing nodes after a load: the text of its "missing nodes"
    dialog (front-ends up to 1.3x list every type there), of a toast ("Missing node: <type>"), or (1.48)
    of the error panel that its "N errors found" overlay opens with "View details" (swappable nodes,
    missing packs, missing models); "" when none of them appears in time."""
    dialog = page.get_by_text("This workflow has missing nodes")
    toast = page.locator(".p-toast-message").filter(has_text="issing node")
    details = page.get_by_role("button", name="View details")
    deadline = time.time() + timeout_ms / 1000
    while time.time() < deadline:
        if dialog.count():
            return page.locator(".p-dialog").first.inner_text()
        if toast.count():
            return "\n".join(toast.all_inner_texts())
        if details.count() and details.first.is_visible():
            details.first.click()
            return error_panel(page).inner_text()
        page.wait_for_timeout(200)
    return ""


def error_panel(page):
    """The front-end's error list in its side panel (1.48: "N Errors detected", then one group per kind)."""
    summary = page.locator("[data-testid=errors-summary-hero]")
    summary.wait_for(timeout=10_000)
    return page.locator("div.flex-col", has=summary).last


def replace_all_nodes(page) -> None:
    """Swap every node the server registered a replacement for, as a user does: "Replace All" in the error
    panel's "Swap Nodes" group (front-ends with node replacement, 1.4x)."""
    replace_all = page.get_by_role("button", name="Replace All")
    if not replace_all.count():
        missing_nodes_report(page)
    replace_all.click()
    replace_all.wait_for(state="detached", timeout=10_000)


def saved_nodes(page) -> list[dict]:
    """The nodes as the front-end would save the graph now (app.graph.serialize())."""
    return page.evaluate("() => app.graph.serialize().nodes")


def graph_to_prompt(page) -> dict:
    """What the Run button would send to /prompt: app.graphToPrompt()'s output."""
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def screenshot_graph(page, path):
    """Dismiss dialogs and banners, fit the whole graph in view, and save a screenshot."""
    for _ in range(3):
        page.keyboard.press("Escape")
    for close in page.locator(".p-toast-close-button").all():      # toasts (missing nodes, replacements)
        if close.is_visible():
            close.click()
    if page.locator("[data-testid=panel-tab-errors]").is_visible():   # the side panel an error report opened
        page.get_by_role("button", name="Toggle properties panel").click()
    # The "Introducing Nodes 2.0" banner along the top: its close button is the last one in it.
    banner_close = page.locator("button.absolute.right-4").first
    if banner_close.count() and banner_close.is_visible():
        banner_close.click()
    page.get_by_role("button", name="Fit View (.)").click()
    time.sleep(0.5)
    page.screenshot(path=str(path))


def workflow_picture(page, path) -> Path:
    """The README's picture of the loaded workflow (what scripts/render_workflow_images.py writes into
    docs/images/): screenshot_graph's PNG next to `path`, and `path` itself as a JPEG README_PICTURE_WIDTH
    wide."""
    from PIL import Image
    path = Path(path)
    png = path.with_suffix(".png")
    screenshot_graph(page, png)
    with Image.open(png) as shot:
        size = (README_PICTURE_WIDTH, round(shot.height * README_PICTURE_WIDTH / shot.width))
        shot.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(path, "JPEG", quality=85)
    return path


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
