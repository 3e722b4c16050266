"""End-to-end fixtures: the real server and one Chromium per participant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Playwright, async_playwright


@pytest.fixture
async def pw() -> AsyncIterator[Playwright]:
    async with async_playwright() as playwright:
        yield playwright
