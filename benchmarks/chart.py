"""The run's chart: each generation scenario's warm job, stock diffusers beside ours (median, with the range)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results import GenerationResult, Run

ROW, BAR, LEFT, RIGHT, TOP = 54, 18, 250, 40, 50
STOCK, OURS, INK, GRID = (150, 150, 150), (32, 110, 200), (20, 20, 20), (225, 225, 225)


def draw_chart(run: Run, path: Path, width: int = 900) -> bool:
    """Write a PNG to `path` when the run has generation results; say whether it did."""
    from PIL import Image, ImageDraw

    results = run.of(GenerationResult)
    if not results:
        return False
    top = max(max(g.stock.high, g.ours.high) for _, g in results) * 1.1
    height = TOP + ROW * len(results) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    env = run.environment
    device = (env.gpu or env.device) if env else run.settings.get("device")
    draw.text((10, 10), f"Warm job, seconds (median; whiskers: range). {device}, "
                        f"{run.settings['size']}x{run.settings['size']}, {run.settings['steps']} steps", fill=INK)
    draw.rectangle((LEFT + 10, 30, LEFT + 20, 40), fill=STOCK)
    draw.text((LEFT + 25, 29), "stock diffusers", fill=INK)
    draw.rectangle((LEFT + 140, 30, LEFT + 150, 40), fill=OURS)
    draw.text((LEFT + 155, 29), "ours", fill=INK)
    scale = (width - LEFT - RIGHT) / top
    for n in range(6):
        x = LEFT + (width - LEFT - RIGHT) * n / 5
        draw.line((x, TOP, x, height - 30), fill=GRID)
        draw.text((x - 10, height - 25), f"{top * n / 5:.2f}", fill=INK)
    for row, (name, g) in enumerate(results):
        y = TOP + ROW * row + 6
        draw.text((10, y + BAR // 2), name[:38], fill=INK)
        for offset, spread, colour in ((0, g.stock, STOCK), (BAR + 2, g.ours, OURS)):
            y0 = y + offset
            draw.rectangle((LEFT, y0, LEFT + spread.median * scale, y0 + BAR), fill=colour)
            middle = y0 + BAR // 2
            draw.line((LEFT + spread.low * scale, middle, LEFT + spread.high * scale, middle), fill=INK)
            draw.text((LEFT + spread.high * scale + 5, y0 + 3), f"{spread.median:.3f}", fill=INK)
    image.save(path)
    return True
