"""What a screen shows ``gymlab watch``: the pygame window, the text drawn over frames, whether a screen is usable.

pygame is imported inside each function: it is needed only when frames are drawn or a window opens.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from gymlab import video
from gymlab.errors import Interrupted

if TYPE_CHECKING:
    import pygame

WINDOW_MIN_SIDE = 480  # small frames (FrozenLake's 256 px) are scaled up by a whole factor


def no_display_reason() -> str | None:
    """Why no window can be opened here (None when a screen looks usable)."""
    driver = os.environ.get("SDL_VIDEODRIVER", "").lower()
    if driver in ("dummy", "offscreen"):
        return f"SDL_VIDEODRIVER={driver}"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no DISPLAY"
    return None


def stop_requested(events: Iterable[Any]) -> bool:
    """Whether pygame events ask to stop: the window closed, or Esc or Q pressed."""
    import pygame

    for event in events:
        if event.type == pygame.QUIT:
            return True
        if event.type == pygame.KEYDOWN and event.key in (pygame.K_ESCAPE, pygame.K_q):
            return True
    return False


def draw_overlay(surface: pygame.Surface, lines: list[str]) -> None:
    """Draw text lines on a dark translucent box in the top-left corner of ``surface``."""
    import pygame

    if not pygame.font.get_init():
        pygame.font.init()
    size = max(12, surface.get_height() // 22)
    font = pygame.font.Font(None, round(size * 1.3))  # pygame's bundled default font
    rendered = [font.render(line, True, (255, 255, 255)) for line in lines]
    pad = max(3, size // 4)
    width = max(r.get_width() for r in rendered) + 2 * pad
    height = sum(r.get_height() for r in rendered) + 2 * pad
    box = pygame.Surface((width, height), pygame.SRCALPHA)
    box.fill((0, 0, 0, 150))
    surface.blit(box, (0, 0))
    y = pad
    for r in rendered:
        surface.blit(r, (pad, y))
        y += r.get_height()


def frame_surface(frame: np.ndarray) -> pygame.Surface:
    """An (H, W, 3) uint8 frame as a pygame Surface (pygame indexes pixels as (x, y))."""
    import pygame

    return pygame.surfarray.make_surface(np.ascontiguousarray(np.swapaxes(video.even_frame(frame), 0, 1)))


def surface_frame(surface: pygame.Surface) -> np.ndarray:
    """A pygame Surface as an (H, W, 3) uint8 frame."""
    import pygame

    return np.ascontiguousarray(np.swapaxes(pygame.surfarray.array3d(surface), 0, 1))


def overlaid(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    """The frame with the overlay drawn on it (no screen needed)."""
    surface = frame_surface(frame)
    draw_overlay(surface, lines)
    return surface_frame(surface)


class Window:
    """The pygame window: shows frames scaled up by a whole factor, reports Esc/close."""

    def __init__(self, frame_shape: tuple[int, ...], title: str) -> None:
        import pygame

        pygame.display.init()
        h, w = frame_shape[:2]
        self.scale = max(1, -(-WINDOW_MIN_SIDE // max(h, w)))  # ceil: at least WINDOW_MIN_SIDE
        self.size = (w * self.scale, h * self.scale)
        self.screen = pygame.display.set_mode(self.size)
        pygame.display.set_caption(title)
        self.clock = pygame.time.Clock()

    def show(self, frame: np.ndarray, lines: list[str], fps: float) -> bool:
        """Draw one frame (paced to ``fps``); returns False when the user asked to stop."""
        import pygame

        surface = pygame.transform.scale(frame_surface(frame), self.size)
        draw_overlay(surface, lines)
        self.screen.blit(surface, (0, 0))
        pygame.display.flip()
        self.clock.tick(fps)
        return not stop_requested(pygame.event.get())

    def hold(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Keep the last frame up for a moment, still answering Esc/close (and ``stop``: :class:`Interrupted`)."""
        import pygame

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if stop is not None and stop.is_set():
                raise Interrupted("interrupted")
            if stop_requested(pygame.event.get()):
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Close the window."""
        import pygame

        pygame.display.quit()


def window_problem() -> str | None:
    """Why no window can open here (None when one can), probing SDL's video driver itself.

    Called before the first frame is rendered: when no window can open, SDL is switched to its
    offscreen driver, because envs that draw their frames with pygame (toy-text, classic control)
    initialise the display even for ``rgb_array``, and with the user's unusable driver (e.g.
    ``SDL_VIDEODRIVER`` empty, unknown or unavailable) they would fail instead of filling the mp4.
    """
    import pygame

    reason = no_display_reason()
    driver = os.environ.get("SDL_VIDEODRIVER")
    if reason is None:
        x11 = os.environ.get("DISPLAY")
        if driver is None and x11 and sys.platform.startswith("linux") and not os.environ.get("WAYLAND_DISPLAY"):
            # DISPLAY names an X server: ask SDL for it alone, or an unreachable one makes SDL fall back to an
            # offscreen driver (after printing other drivers' errors) and the window shows nowhere.
            os.environ["SDL_VIDEODRIVER"] = "x11"
        try:
            pygame.display.init()
        except pygame.error as exc:
            where = f"DISPLAY={x11!r}: " if x11 and driver is None else ""
            reason = f"cannot open a window ({f'SDL_VIDEODRIVER={driver!r}: ' if driver is not None else where}{exc})"
        else:
            got = pygame.display.get_driver()
            if got in ("dummy", "offscreen"):
                reason = f"cannot open a window (SDL found no screen and chose its {got} driver)"
    if reason is not None and (driver or "").lower() not in ("dummy", "offscreen"):
        pygame.display.quit()
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    return reason


def open_window(frame: np.ndarray, title: str, problem: str | None) -> tuple[Window | None, str]:
    """A window for frames like ``frame``; else None and why (``problem`` from :func:`window_problem`, or pygame's)."""
    if problem is not None:
        return None, problem
    try:
        return Window(frame.shape, title), ""
    except Exception as exc:  # pygame.error and friends: no usable screen after all
        return None, f"cannot open a window ({exc})"
