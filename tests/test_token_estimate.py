"""Parts of the count_tokens estimate that need no tokenizer oracle."""

import base64
import collections
import struct
import unittest
import zlib

from support import codex_proxy

# OpenAI's published examples of image input costs (the vision guide):
# (width, height, detail) -> tokens.
PUBLISHED_IMAGE_TOKENS = {
    (1024, 1024, "high"): 765,  # 4 tiles of 512 after scaling to 768x768
    (2048, 4096, "high"): 1105,  # 6 tiles after scaling to 768x1536
    (4096, 8192, "low"): 85,
}


def png_data_url(width, height):
    """A PNG as a data URL: the signature and IHDR chunk, which is all a size reader needs."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode("ascii")


class ImageTokensTest(unittest.TestCase):
    def test_published_examples(self):
        for (width, height, detail), tokens in PUBLISHED_IMAGE_TOKENS.items():
            with self.subTest(size=(width, height), detail=detail):
                self.assertEqual(codex_proxy.image_tokens(png_data_url(width, height), detail), tokens)

    def test_a_jpeg_whose_size_comes_after_big_metadata(self):
        # Segments of EXIF-like metadata first, then the SOF0 frame header with the size.
        app = b"\xff\xe1" + struct.pack(">H", 65000) + b"\0" * 64998
        sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 2048, 4096) + b"\0" * 10
        jpeg = b"\xff\xd8" + app * 4 + sof + b"\xff\xd9"
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        self.assertGreater(len(url), codex_proxy.IMAGE_HEAD)
        self.assertEqual(codex_proxy.image_tokens(url), 1105)  # 4096x2048, as OpenAI's published example

    def test_unknown_sizes_cost_as_much_as_a_large_image(self):
        self.assertEqual(codex_proxy.image_tokens("https://example.com/cat.png"), 765)
        self.assertEqual(codex_proxy.image_tokens("https://example.com/cat.png", "low"), 85)


class SlicedCountTest(unittest.TestCase):
    def test_a_long_text_is_counted_in_slices_with_the_same_result(self):
        # Each regex pass holds the GIL: a long text goes in slices, so the event loop runs between.
        text = "The quick brown fox, jumps over 1234 lazy dogs!\n" * 5000 + "x" * 100000 + " tail"
        pieces = list(codex_proxy.text_slices(text))
        self.assertEqual("".join(pieces), text)
        self.assertLessEqual(max(map(len, pieces)), 2 * codex_proxy.TOKEN_SLICE)
        self.assertGreater(len(pieces), 5)
        whole = collections.Counter(codex_proxy._PIECE.findall(text))
        self.assertEqual(codex_proxy.estimate_text_tokens(text),
                         int(round(sum(n * codex_proxy._piece_cost(p) for p, n in whole.items()))))


class QuickCountTest(unittest.TestCase):
    def test_small_requests_are_counted_large_ones_sized(self):
        small = {"instructions": "Be brief.", "input": [{"type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": "hello " * 50}]}]}
        self.assertEqual(codex_proxy.quick_request_tokens(small), codex_proxy.estimate_request_tokens(small))
        large = dict(small, input=small["input"] * 200)
        size = len(codex_proxy.compact_json(large))
        self.assertGreater(size, codex_proxy.QUICK_COUNT_CHARS)
        self.assertEqual(codex_proxy.quick_request_tokens(large), size // 4)
        # An image is counted at what an image costs, not by its base64.
        image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 2000000}
        with_image = dict(large, input=large["input"] + [{"type": "message", "role": "user", "content": [image]}])
        self.assertLess(abs(codex_proxy.quick_request_tokens(with_image) - (size // 4 + 765)), 50)


if __name__ == "__main__":
    unittest.main()
