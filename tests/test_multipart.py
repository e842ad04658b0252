"""multipart/form-data bodies (parse_form_data, form_fields), without sockets.

A table of bodies and the parts, or the error, each gives; then round trips through real
encoders: httpx's (the openai SDK's; httpx2 in its newer releases) where it is installed, and
the standard library's email generator, with seeded random binary files whose every byte must
come back; then what the openai SDK itself sends for images.edit. The encoders and the SDK are
optional: those tests skip without them unless CODEX_PROXY_REQUIRE_OPTIONAL is set."""

import email.generator
import email.message
import email.policy
import io
import os
import random
import sys
import time
import tracemalloc
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from codex_proxy import (MAX_FORM_PARTS, MAX_PART_HEAD, ClientError, FormPart, form_fields,  # noqa: E402
                         parse_form_data)

REQUIRE = bool(os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL"))

try:  # the openai SDK's HTTP client: httpx2 in its newest releases, httpx before
    import httpx2 as httpx
except ImportError:
    try:
        import httpx
    except ImportError:
        if REQUIRE:
            raise
        httpx = None

try:
    import openai
except ImportError:
    if REQUIRE:
        raise
    openai = None

BOUNDARY = "xyz"
FORM = "multipart/form-data; boundary=" + BOUNDARY


def lines(*texts, newline=b"\r\n"):
    """A body of these lines (bytes, or text as UTF-8), each ended by `newline`."""
    return b"".join((t if isinstance(t, bytes) else t.encode("utf-8")) + newline for t in texts)


def field(name, value, boundary=BOUNDARY):
    """One text part of a CRLF body, its boundary line first."""
    return lines("--" + boundary, 'Content-Disposition: form-data; name="%s"' % name, "", value)


def end(boundary=BOUNDARY):
    return lines("--%s--" % boundary)


def text_part(name, data):
    return FormPart(name, None, None, data)


def file_part(name, filename, content_type, data):
    return FormPart(name, filename, content_type, data)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\r\n--\r\n--xy\r\n--xyzz\r\n--xyz \x00\n--xyz\r\n-"  # looks, never is
HEAD_LINE = "X-Filler: " + "a" * 90  # to fill header blocks
PADDED = (MAX_PART_HEAD - len('Content-Disposition: form-data; name="f"')) // (len(HEAD_LINE) + 2)  # that fit
HEAD_FILL = [HEAD_LINE] * PADDED


def head_of(extra):
    """A part's headers taking exactly MAX_PART_HEAD + extra bytes, the blank line excluded."""
    disposition = 'Content-Disposition: form-data; name="f"'
    used = len(disposition) + PADDED * (len(HEAD_LINE) + 2) + 2 + len("X-Last: ")
    return HEAD_FILL + ["X-Last: " + "b" * (MAX_PART_HEAD + extra - used), disposition]


# (name, body, Content-Type, the parts)
FORMS = [
    ("a text field", field("prompt", "a red fox") + end(), FORM, [text_part("prompt", b"a red fox")]),
    ("a file with its name and type",
     lines("--xyz", 'Content-Disposition: form-data; name="image"; filename="fox.png"',
           "Content-Type: Image/PNG; x=1", "", PNG, "--xyz--"), FORM,
     [file_part("image", "fox.png", "image/png", PNG)]),
    ("several files of one name, then a field",
     lines("--xyz", 'Content-Disposition: form-data; name="image"; filename="a.png"', "", "A",
           "--xyz", 'Content-Disposition: form-data; name="image"; filename="b.png"', "", "B")
     + field("n", "2") + end(), FORM,
     [file_part("image", "a.png", None, b"A"), file_part("image", "b.png", None, b"B"), text_part("n", b"2")]),
    ("image[], as the openai SDK sends several",
     lines("--xyz", 'Content-Disposition: form-data; name="image[]"; filename="a.png"', "Content-Type: image/png",
           "", "A", "--xyz", 'Content-Disposition: form-data; name="image[]"; filename="upload"',
           "Content-Type: application/octet-stream", "", "B", "--xyz--"), FORM,
     [file_part("image[]", "a.png", "image/png", b"A"),
      file_part("image[]", "upload", "application/octet-stream", b"B")]),
    ("a quoted boundary of spaces and =", field("a", "1", "==a b=") + end("==a b="),
     'multipart/form-data; charset=utf-8; boundary="==a b="', [text_part("a", b"1")]),
    ("a boundary of 70 characters", field("a", "1", "b" * 70) + end("b" * 70),
     "multipart/form-data; boundary=" + "b" * 70, [text_part("a", b"1")]),
    ("parameters' case and spacing, a trailing ;",
     field("a", "1") + end(), "Multipart/Form-Data ;BOUNDARY = xyz ;", [text_part("a", b"1")]),
    ("header names in any case",
     lines("--xyz", 'content-disposition: FORM-DATA; NAME="A"; FileName="f.txt"', "CONTENT-TYPE: text/plain",
           "", "x", "--xyz--"), FORM, [file_part("A", "f.txt", "text/plain", b"x")]),
    ("escaped quote and backslash in a quoted filename",
     lines("--xyz", r'Content-Disposition: form-data; name="f"; filename="say \"hi\" \\ bye.png"', "", "x",
           "--xyz--"), FORM, [file_part("f", 'say "hi" \\ bye.png', None, b"x")]),
    ("a ; inside a quoted name",
     lines("--xyz", 'Content-Disposition: form-data; name="a;b=c"; filename="x"', "", "x", "--xyz--"), FORM,
     [file_part("a;b=c", "x", None, b"x")]),
    ("HTML's escapes: %22, %0D, %0A",
     lines("--xyz", 'Content-Disposition: form-data; name="q%22x"; filename="a%0D%0Ab %22c%22.png"', "", "x",
           "--xyz--"), FORM, [file_part('q"x', 'a\r\nb "c".png', None, b"x")]),
    ("RFC 5987 filename* before and after filename",
     lines("--xyz", "Content-Disposition: form-data; name=f; filename*=UTF-8''%E2%82%AC%20rates.png; "
           'filename="EUR rates.png"', "", "x", "--xyz",
           "Content-Disposition: form-data; filename=\"plain\"; filename*=iso-8859-1'en'caf%E9; name=\"g\"", "", "y",
           "--xyz--"), FORM,
     [file_part("f", "\u20ac rates.png", None, b"x"), file_part("g", "caf\u00e9", None, b"y")]),
    ("a quoted filename*, a name*",
     lines("--xyz", "Content-Disposition: form-data; name*=UTF-8''%C3%A9; filename*=\"UTF-8''%C3%A9.png\"", "", "x",
           "--xyz--"), FORM, [file_part("\u00e9", "\u00e9.png", None, b"x")]),
    ("UTF-8 names and filenames sent as they are",
     lines("--xyz", 'Content-Disposition: form-data; name="\u00e9t\u00e9"; filename="\u732b.png"', "", "x",
           "--xyz--"), FORM, [file_part("\u00e9t\u00e9", "\u732b.png", None, b"x")]),
    ("binary data: CR LF, -- and what starts like a boundary line",
     lines("--xyz", 'Content-Disposition: form-data; name="f"; filename="b"', "", PNG) + field("n", "1") + end(),
     FORM, [file_part("f", "b", None, PNG), text_part("n", b"1")]),
    ("preamble and epilogue",
     b"this is the preamble\r\n--xyz is not the boundary line\r\n" + field("a", "1") + end() + b"epilogue\r\n--xyz\r\n",
     FORM, [text_part("a", b"1")]),
    ("a preamble that ends in a bare LF", b"preamble\n" + field("a", "1") + end(), FORM, [text_part("a", b"1")]),
    ("padding after boundaries", lines("--xyz \t", 'Content-Disposition: form-data; name="a"', "", "1", "--xyz-- "),
     FORM, [text_part("a", b"1")]),
    ("the close delimiter without a line end", field("a", "1") + b"--xyz--", FORM, [text_part("a", b"1")]),
    ("empty data", field("a", "") + lines("--xyz", 'Content-Disposition: form-data; name="f"; filename=""', "", "")
     + end(), FORM, [text_part("a", b""), file_part("f", "", None, b"")]),
    ("a form of no parts", end(), FORM, []),
    ("bare LF line ends throughout",
     lines("--xyz", 'Content-Disposition: form-data; name="a"', "", "1\r", "--xyz",
           'Content-Disposition: form-data; name="f"; filename="x"', "Content-Type: image/png", "", "2\r\n3",
           "--xyz--", newline=b"\n"), FORM,
     [text_part("a", b"1\r"), file_part("f", "x", "image/png", b"2\r\n3")]),
    ("in a CRLF body, a line after a bare LF is data", field("a", "1\n--xyz\n2") + end(), FORM,
     [text_part("a", b"1\n--xyz\n2")]),
    ("Content-Transfer-Encoding binary, and other headers",
     lines("--xyz", 'Content-Disposition: form-data; name="a"', "Content-Transfer-Encoding: Binary",
           "MIME-Version: 1.0", "", "1", "--xyz--"), FORM, [text_part("a", b"1")]),
    ("%d parts" % MAX_FORM_PARTS, field("a", "1") * MAX_FORM_PARTS + end(), FORM,
     [text_part("a", b"1")] * MAX_FORM_PARTS),
    ("headers of %d KB" % (MAX_PART_HEAD // 1024), lines("--xyz", *head_of(0), "", "1", "--xyz--"), FORM,
     [text_part("f", b"1")]),
]

# (name, body, Content-Type, what the error says)
REFUSED = [
    ("no Content-Type", field("a", "1") + end(), None, "The Content-Type is missing"),
    ("JSON", b'{"prompt": "x"}', "application/json", "The Content-Type is application/json; expected multipart"),
    ("multipart/mixed", field("a", "1") + end(), "multipart/mixed; boundary=xyz",
     "The Content-Type is multipart/mixed; boundary=xyz; expected multipart/form-data with a boundary"),
    ("no boundary", field("a", "1") + end(), "multipart/form-data", "has no boundary parameter"),
    ("an empty boundary", field("a", "1") + end(), 'multipart/form-data; boundary=""', "has no boundary parameter"),
    ("a boundary of 71 characters", field("a", "1", "b" * 71) + end("b" * 71),
     "multipart/form-data; boundary=" + "b" * 71, "must be 1 to 70 printable ASCII characters"),
    ("a boundary with a control character", field("a", "1") + end(), 'multipart/form-data; boundary="x\x01"',
     "must be 1 to 70 printable ASCII characters"),
    ("a boundary given twice", field("a", "1") + end(), "multipart/form-data; boundary=xyz; boundary=abc",
     "gives boundary twice"),
    ("a Content-Type with an unended quote", field("a", "1") + end(), 'multipart/form-data; boundary="xyz',
     "The Content-Type is malformed"),
    ("another boundary in the body", field("a", "1", "abc") + end("abc"), FORM, "has no boundary line (--xyz)"),
    ("an empty body", b"", FORM, "has no boundary line"),
    ("no closing delimiter", field("a", "1"), FORM, "ends without its closing boundary line (--xyz--)"),
    ("cut short in a part's data", field("a", "1")[:-3], FORM, "ends without its closing boundary line"),
    ("bare LF line ends after a CRLF first line",
     b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\n--xyz--\n', FORM,
     "ends without its closing boundary line"),
    ("no Content-Disposition", lines("--xyz", "Content-Type: text/plain", "", "1", "--xyz--"), FORM,
     "Part 1 of the form has no Content-Disposition header"),
    ("no headers at all", field("a", "1") + lines("--xyz", "", "1", "--xyz--"), FORM,
     "Part 2 of the form has no Content-Disposition header"),
    ("two Content-Dispositions",
     lines("--xyz", 'Content-Disposition: form-data; name="a"', 'Content-Disposition: form-data; name="b"', "", "1",
           "--xyz--"), FORM, "has more than one Content-Disposition header"),
    ("no name", lines("--xyz", 'Content-Disposition: form-data; filename="a.png"', "", "1", "--xyz--"), FORM,
     "The Content-Disposition of part 1 has no name"),
    ("a name given twice", lines("--xyz", 'Content-Disposition: form-data; name="a"; name="b"', "", "1", "--xyz--"),
     FORM, "The Content-Disposition of part 1 gives name twice"),
    ("not form-data", lines("--xyz", 'Content-Disposition: attachment; name="a"', "", "1", "--xyz--"), FORM,
     "is 'attachment', not form-data"),
    ("a malformed Content-Disposition", lines("--xyz", 'Content-Disposition: form-data; name="a', "", "1", "--xyz--"),
     FORM, "The Content-Disposition of part 1 is malformed"),
    ("filename* in an unknown charset",
     lines("--xyz", "Content-Disposition: form-data; name=a; filename*=rot13''nop", "", "1", "--xyz--"), FORM,
     "filename* is not charset'language'text"),
    ("filename* without its quotes",
     lines("--xyz", "Content-Disposition: form-data; name=a; filename*=UTF-8%E2%82%AC", "", "1", "--xyz--"), FORM,
     "filename* is not charset'language'text"),
    ("filename* not in its charset",
     lines("--xyz", "Content-Disposition: form-data; name=a; filename*=UTF-8''%E9", "", "1", "--xyz--"), FORM,
     "filename* is not UTF-8"),
    ("a malformed header line", lines("--xyz", 'Content-Disposition: form-data; name="a"', "no colon", "", "1",
                                      "--xyz--"), FORM, "Part 1 of the form has a malformed header line: no colon"),
    ("a folded header line", lines("--xyz", "Content-Disposition: form-data;", ' name="a"', "", "1", "--xyz--"),
     FORM, "malformed header line"),
    ("a control character in a header", lines("--xyz", 'Content-Disposition: form-data; name="a\x01"', "", "1",
                                              "--xyz--"), FORM, "malformed header line"),
    ("headers that run into the next part",
     lines("--xyz", 'Content-Disposition: form-data; name="a"', "--xyz", 'Content-Disposition: form-data; name="b"',
           "", "1", "--xyz--"), FORM, "Part 1 of the form has headers that do not end"),
    ("headers cut short", lines("--xyz", 'Content-Disposition: form-data; name="a"'), FORM,
     "headers that do not end"),
    ("a header block over %d KB" % (MAX_PART_HEAD // 1024), lines("--xyz", *head_of(1), "", "1", "--xyz--"), FORM,
     "Part 1 of the form has headers over 16 KB"),
    ("more than %d parts" % MAX_FORM_PARTS, field("a", "1") * (MAX_FORM_PARTS + 1) + end(), FORM,
     "The form has more than %d parts" % MAX_FORM_PARTS),
    ("Content-Transfer-Encoding base64",
     lines("--xyz", 'Content-Disposition: form-data; name="a"', "Content-Transfer-Encoding: base64", "", "MQ==",
           "--xyz--"), FORM, "Part 1 of the form (a) has Content-Transfer-Encoding base64"),
]


class ParseTests(unittest.TestCase):
    def test_forms(self):
        for name, body, content_type, parts in FORMS:
            with self.subTest(name):
                self.assertEqual(parse_form_data(body, content_type), parts)

    def test_refusals(self):
        for name, body, content_type, message in REFUSED:
            with self.subTest(name):
                with self.assertRaises(ClientError) as caught:
                    parse_form_data(body, content_type)
                self.assertEqual(caught.exception.status, 400)
                self.assertIn(message, caught.exception.message)

    def test_a_header_block_is_measured_as_the_limit_says(self):
        self.assertEqual(len(lines(*head_of(0))), MAX_PART_HEAD + 2)  # its last CRLF is the blank line's
        self.assertEqual(len(lines(*head_of(1))), MAX_PART_HEAD + 3)

    def test_the_data_is_one_copy_of_the_body(self):
        data = os.urandom(4 * 1024 * 1024)
        body = lines("--xyz", 'Content-Disposition: form-data; name="f"; filename="x"', "", data, "--xyz--")
        tracemalloc.start()
        try:
            parts = parse_form_data(body, FORM)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(parts[0].data, data)
        self.assertLess(peak, len(data) * 1.1)  # the part's bytes, not a copy of the body as well

    def test_bodies_made_to_be_slow_are_read_in_linear_time(self):
        # Each near miss of a boundary line once cost a turn of a Python loop (16 MB of them: 2 s), and
        # each header line of inner blanks a pass over the rest of the line at each character (73 s here).
        near_misses = lines("--x", 'Content-Disposition: form-data; name="f"; filename="n"', "",
                            b"\r\n--xy" * (16 * 1024 * 1024 // 6), "--x--")
        blanks = lines("--x", 'Content-Disposition: form-data; name="f"', "X-A: a" + " " * (MAX_PART_HEAD - 100) + "b",
                       "", "1") * MAX_FORM_PARTS + end("x")
        for name, body, count in (("near misses", near_misses, 1), ("blanks", blanks, MAX_FORM_PARTS)):
            with self.subTest(name):
                started = time.monotonic()
                parts = parse_form_data(body, "multipart/form-data; boundary=x")
                self.assertLess(time.monotonic() - started, 1.0)
                self.assertEqual(len(parts), count)


class FieldTests(unittest.TestCase):
    def test_text_and_files_as_an_endpoint_reads_them(self):
        a, b = file_part("image[]", "a.png", "image/png", b"A"), file_part("image[]", "b.png", "image/png", b"B")
        mask, other = file_part("mask", "m.png", "image/png", b"M"), file_part("image", "c.png", None, b"C")
        parts = [text_part("prompt", "un renard \u00e9".encode("utf-8")), a, text_part("n", b"2"), b, mask,
                 text_part("tags[]", b"x"), text_part("tags[]", b"y"), other]
        text, files = form_fields(parts)
        self.assertEqual(text, {"prompt": "un renard \u00e9", "n": "2", "tags": ["x", "y"]})
        self.assertEqual(files, {"image": [a, b, other], "mask": [mask]})

    def test_refusals(self):
        cases = [
            ("a field given twice", [text_part("n", b"1"), text_part("n", b"2")],
             "The form field n is given more than once", "n"),
            ("a field and a list of one name", [text_part("n", b"1"), text_part("n[]", b"2")],
             "The form field n is given more than once", "n"),
            ("a list and a field of one name", [text_part("n[]", b"1"), text_part("n", b"2")],
             "The form field n is given more than once", "n"),
            ("text not UTF-8", [text_part("prompt", b"caf\xe9 au lait")],
             "The form field prompt is not UTF-8 text (invalid continuation byte)", "prompt"),
        ]
        for name, parts, message, param in cases:
            with self.subTest(name):
                with self.assertRaises(ClientError) as caught:
                    form_fields(parts)
                self.assertIn(message, caught.exception.message)
                self.assertEqual((caught.exception.status, caught.exception.param), (400, param))


def random_files(seed, boundary):
    """Seeded random binary files, some holding what starts like the boundary's lines."""
    rnd = random.Random(seed)
    files = []
    for size in (0, 1, 2, 100, 4096, 65537, 300000):
        data = bytearray(rnd.getrandbits(8 * size).to_bytes(size, "little") if size else b"")
        for _ in range(min(size // 50, 8)):  # near misses, at random places
            at = rnd.randrange(len(data) + 1)
            data[at:at] = rnd.choice([b"\r\n--", b"\r\n--" + boundary[:-1], b"\r\n--" + boundary + b"x",
                                      b"\r\n--" + boundary + b" x\r\n", b"\n--" + boundary + b"\n", b"\r\n"])
        files.append(bytes(data))
    return files


class RoundTripTests(unittest.TestCase):
    """Bodies made by real encoders come back whole."""

    @unittest.skipIf(httpx is None, "httpx is not installed (pip install openai brings it)")
    def test_httpx(self):
        for seed in range(3):
            boundary = os.urandom(16).hex().encode("ascii") if seed else b"b-" + b"7" * 40
            files = random_files(seed, boundary)
            names = ['a "quoted" \\ name.png', "\u732b \u00e9.bin", "semi;colon=.png", "plain"]
            sent = [("image[]", (names[i % len(names)], data, "image/png" if i % 2 else "application/octet-stream"))
                    for i, data in enumerate(files)]
            data = {"prompt": "un renard \u00e9\r\nsur deux lignes", "n": "2"}
            request = httpx.Request("POST", "http://127.0.0.1/v1/images/edits", data=data, files=sent,
                                    headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})
            parts = parse_form_data(request.read(), request.headers["content-type"])
            text, received = form_fields(parts)
            self.assertEqual(text, data)
            self.assertEqual([(p.filename, p.content_type, p.data) for p in received["image"]],
                             [(filename, content_type, content) for _, (filename, content, content_type) in sent])

    def test_email_generator(self):
        for seed in range(3):
            files = [crlf_only(data) for data in random_files(seed, b"===============")]
            root = email.message.EmailMessage(policy=email.policy.HTTP)
            root["Content-Type"] = "multipart/form-data"
            for i, data in enumerate(files):
                attach(root, "image[]" if i % 2 else "pi\u00e8ce %d" % i, data, "application", "octet-stream",
                       filename="fichier \"%d\" \u00e9.bin" % i)
            attach(root, "prompt", "un renard \u00e9".encode("utf-8"), "text", "plain")
            out = io.BytesIO()
            email.generator.BytesGenerator(out, policy=email.policy.HTTP).flatten(root)
            head, _, body = out.getvalue().partition(b"\r\n\r\n")
            content_type = head.decode("ascii").split("\r\n")[0].partition(":")[2]
            self.assertIn('boundary="===', content_type)  # a quoted boundary with = in it
            parts = parse_form_data(body, content_type)
            self.assertEqual([(p.name, p.filename, p.content_type, p.data) for p in parts],
                             [("image[]" if i % 2 else "pi\u00e8ce %d" % i, "fichier \"%d\" \u00e9.bin" % i,
                               "application/octet-stream", data) for i, data in enumerate(files)]
                             + [("prompt", None, "text/plain", "un renard \u00e9".encode("utf-8"))])

    @unittest.skipIf(openai is None or httpx is None, "the openai SDK is not installed (pip install openai)")
    def test_what_the_openai_sdk_sends_for_an_image_edit(self):
        sent = []

        def answer(request):
            sent.append((request.headers["content-type"], request.read()))
            return httpx.Response(200, json={"created": 1, "data": []})

        client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1",
                               http_client=httpx.Client(transport=httpx.MockTransport(answer)))
        first, second, mask = random_files(1, b"")[4:7]
        named = io.BytesIO(first)
        named.name = "fox.png"
        client.images.edit(image=[named, ("b.png", second, "image/png")], mask=mask, prompt="a fox \u00e9",
                           model="gpt-image-1", n=2)
        text, files = form_fields(parse_form_data(sent[0][1], sent[0][0]))
        self.assertEqual(text, {"prompt": "a fox \u00e9", "model": "gpt-image-1", "n": "2"})
        self.assertEqual([(p.name, p.filename, p.content_type, p.data) for p in files["image"]],
                         [("image[]", "fox.png", "image/png", first), ("image[]", "b.png", "image/png", second)])
        self.assertEqual([(p.name, p.filename, p.content_type, p.data) for p in files["mask"]],
                         [("mask", "upload", "application/octet-stream", mask)])  # bytes: no name, no type
        client.images.edit(image=first, prompt="one")
        text, files = form_fields(parse_form_data(sent[1][1], sent[1][0]))
        self.assertEqual(([p.name for p in files["image"]], text["prompt"]), (["image"], "one"))


def crlf_only(data):
    """`data` with every CR and LF made a CRLF: email's generator writes mail, whose lines end so."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def attach(root, name, data, maintype, subtype, filename=None):
    part = email.message.EmailMessage(policy=email.policy.HTTP)
    part.set_content(data, maintype, subtype, cte="binary", disposition="form-data", filename=filename)
    part.set_param("name", name, header="Content-Disposition")
    root.attach(part)


if __name__ == "__main__":
    unittest.main()
