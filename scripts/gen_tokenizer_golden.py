#!/usr/bin/env python3
"""Generate the golden set for the C++ tokenizer (rtp::text::Tokenizer) from Hugging Face `tokenizers`.

Usage:
  python3 scripts/gen_tokenizer_golden.py \
      [--tokenizer ../shared/data/qwen3-tokenizer/tokenizer.json] \
      [--output data/fixtures/tokenizer/golden.jsonl] [--seed 20250101]

Writes one JSON object per line: {"text", "ids", "decoded", "decoded_skip"} (decode-only records, ids of
single-byte tokens that are often invalid UTF-8, have no "text") where
  ids          = Tokenizer.encode(text, add_special_tokens=False).ids
  decoded      = Tokenizer.decode(ids, skip_special_tokens=False)
  decoded_skip = Tokenizer.decode(ids, skip_special_tokens=True)
The first line is a header {"meta": {...}} with the tokenizers version, the tokenizer file's sha256, the seed
and get_vocab_size(with_added_tokens=True). Everything is deterministic for a given seed.
Only this script uses Python `tokenizers`; the C++ tests never do.
"""
import argparse
import hashlib
import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def fixed_cases():
    c = []
    # --- Latin, accents, contractions ---
    c += [
        "Hello world",
        "Hello, world! How are you?",
        "The quick brown fox jumps over the lazy dog.",
        "I'm, you're, he's, she'll, we've, they'd, it's, can't, won't",
        "I'M, YOU'RE, HE'S, SHE'LL, WE'VE, THEY'D, IT'S, CAN'T",
        "He'S there'LL be 'Re 'vE 'M 'D 'T 'Ll",
        "'s 't 're 've 'm 'll 'd",
        "'ſ 'ſt 'K 'ß x'ſ",
        "don’t (curly apostrophe) vs don't",
        "'''s'''",
        "'",
        "''",
        "a'b'c'd'e's",
        "Café naïve façade coöperate résumé Ångström Øresund Łódź Dvořák",
        "Ça va? Où est-il? Über straße ÆØÅ æøå ÿ ĳ ŉ",
        "fiancée déjà-vu jalapeño piñata São Paulo",
        "ǅ ǈ ǋ ǲ titlecase digraphs",
        "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ ligatures",
    ]
    # --- NFC: decomposed forms that NFC composes, and ones it does not ---
    c += [
        "e\u0301 a\u0300 o\u0308 n\u0303 c\u0327",
        "Cafe\u0301 re\u0301sume\u0301",
        "A\u030a ångström",
        "\u1100\u1161\u11a8 (conjoining jamo -> 각)",
        "\u0041\u0301\u0323 multiple marks reorder",
        "q\u0307\u0323 no precomposed",
        "\u212b angstrom sign, \u2126 ohm sign, \u212a kelvin",
        "\u0344 \u0340 \u0341 singleton decompositions",
        "\u0958 \u0929 Devanagari nukta",
        "x\u0301\u0301\u0301\u0301",
        "\u0301 leading combining mark",
        " \u0301 space then mark",
        "\u00e9\u0301 precomposed plus mark",
        "\uac00\u11a8 hangul LV + T",
        # characters newer than Unicode 9.0 (HF's NFC tables): no reordering or composition for them
        "x\u0351\u1df8 x\u1df8\u0351 \u08cb\u0325 \u0325\u0353\u08cb",
        "\U00011935\U00011930 \U00011938 dives akuru",
        "\u0e01\u0e33 \u0fb2\u0f80 \u1b05\u1b35",
    ]
    # letters and digits from recent Unicode versions (Oniguruma in tokenizers knows Unicode 16)
    c += [
        "a\U00031350b 15.0 CJK ext H", "a\U00011f04b \U00011f50 15.0 Kawi", "a\U0002ebf0b 15.1 CJK ext I",
        "a\U00010d50b \U00010d40 16.0 Garay", "a\U0001e5d0b 16.0 Ol Onal", "a\U00016d40b 16.0 Kirat Rai",
        "a\U00010940b 17.0 Sidetic", "a\U000323b0b 17.0 CJK ext J", "\U0001fbf0\U0001fbf1 segmented digits",
    ]
    # --- CJK, Arabic, Hindi, Thai, Russian, Greek, others ---
    c += [
        "你好，世界！今天天气很好。",
        "我爱自然语言处理和机器学习。",
        "日本語のテキスト、ひらがなとカタカナ。東京は大きい都市です。",
        "한국어 텍스트입니다. 안녕하세요!",
        "中文English混合mixed文本123数字",
        "مرحبا بالعالم! كيف حالك؟ ١٢٣٤٥٦٧٨٩٠",
        "العربية: الذكاء الاصطناعي",
        "שלום עולם",
        "नमस्ते दुनिया! हिन्दी में पाठ। १२३",
        "ভাষা বাংলা",
        "தமிழ் மொழி",
        "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
        "Привет, мир! Как дела? Ёлка ЁЛКА",
        "Γειά σου Κόσμε! ΑΒΓΔ αβγδ ς",
        "Ἀθῆναι ᾅδης polytonic",
        "Tiếng Việt có dấu: Hà Nội, Sài Gòn",
        "ქართული ენა",
        "Հայերեն",
        "አማርኛ",
        "ᠮᠣᠩᠭᠣᠯ mongolian \u180e vowel sep",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝟙𝟚𝟛",
        "Ⅻ ⅻ ½ ¾ ² ³ ① ② ⑩ ⒈",
        "٣ ৩ ๓ ３ １２３ full-width digits",
        "ＡＢＣ ｶﾀｶﾅ full-width/half-width",
    ]
    # --- emoji ---
    c += [
        "😀😃😄😁 emoji",
        "👍🏻 👍🏼 👍🏽 👍🏾 👍🏿 skin tones",
        "👨‍👩‍👧‍👦 family ZWJ",
        "👩🏽‍💻 🏳️‍🌈 🏴‍☠️",
        "🇺🇸🇯🇵🇩🇪🇫🇷 flags",
        "🏴󠁧󠁢󠁳󠁣󠁴󠁿 subdivision flag",
        "❤️ ❤ ♥️ ✔️ ☑️ variation selectors",
        "1️⃣ #️⃣ keycaps",
        "Hello 👋 world 🌍!",
        "🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂",
    ]
    # --- code ---
    c += [
        "def foo(x, y=2):\n    return x ** y  # power\n",
        "int main(int argc, char** argv) {\n\tprintf(\"%d\\n\", argc);\n\treturn 0;\n}\n",
        "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![1, 2, 3];\n    Ok(())\n}",
        "const f = async (a) => { await fetch(`/api/${a}`); };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
        "#include <vector>\ntemplate <typename T> struct S { T x; };\n",
        "<html><body><div class=\"a\">Text &amp; more</div></body></html>",
        "if [[ -z \"$HOME\" ]]; then echo 'no home' >&2; exit 1; fi",
        "x = {'a': [1, 2, 3], \"b\": None}\nprint(x['a'][0])",
        "    \n        \n\t\t\n",
        "a+=b;c-=d;e*=f;g/=h;i%=j;k&&l||m!n",
        "$$\\frac{a}{b} + \\sum_{i=0}^{n} x_i^2$$",
        "https://example.com/path?query=1&b=2#frag",
        "user@example.com, +1-555-123-4567",
        "{\"key\": \"value\", \"num\": 12345.678e-9}",
        "    def method(self):\r\n        pass\r\n",
    ]
    # --- whitespace ---
    ws = [
        " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", "\n\n\n", " \n", "\n ", " \n ", "  \n  ",
        "\t\n\t", "\r\n\r\n", " \r\n ", "a  b", "a   b", "a\tb", "a\t\tb", "a \tb", "a\t b",
        "a\nb", "a\n\nb", "a \n b", "a  \n  b", "a\r\nb", "a \r\n b", "a\u00a0b", "a\u00a0\u00a0b",
        "a \u00a0b", "a\u00a0 b", "a\u3000b", "a\u3000\u3000b", "\u3000中文", "a\u2028b", "a\u2029b",
        "a\u2028\u2028b", "a\u0085b", "a\u1680b", "a\u2000b", "a\u2009b", "a\u200ab", "a\u202fb",
        "a\u205fb", "a\u200bb", "a\ufeffb", "a\u180eb", "a\u000bb", "a\u000cb", "a\u001cb", "a\u001fb",
        "a\u0085\u0085b", "end with spaces   ", "   start with spaces", "\n\nstart newlines",
        "end newlines\n\n", "mixed \t \n \r\n \u00a0 \u3000 end", " \u00a0\n", "\u00a0\n\u00a0x",
        "x \u2028 y", "x\u2028\ny", "x\n\u2028y", "1 2  3   4", "!  !", "!\n!", ". \n.", "a\n\r\nb",
        "\t\ta", "  a", " a", "\u00a0a", "\u3000a", "\u2028a", " !", "  !", "\n!", "\u00a0!",
        " 1", "  1", "\t1",
    ]
    c += ws
    # --- digits ---
    c += [
        "1234567890", "3.14159265358979", "1,000,000", "2024-01-31T12:34:56Z", "v1.2.3-rc4",
        "0x1F 0b1010 1e10 -42 +7", "12abc34def", "abc123", "١٢٣ ٤٥٦", "9" * 50,
    ]
    # --- special tokens inline ---
    c += [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
        "<|endoftext|>",
        "text<|endoftext|>more text",
        "<|endoftext|><|endoftext|>",
        " <|im_start|> spaced <|im_end|> ",
        "<think>\nreasoning here\n</think>\n\nanswer",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
        "<tool_response>ok</tool_response>",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>pass<|fim_pad|>",
        "<|repo_name|>x<|file_sep|>y",
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
        "<|box_start|>(1,2)<|box_end|><|quad_start|><|quad_end|><|object_ref_start|>a<|object_ref_end|>",
        "<|video_pad|><|vision_pad|>",
        "<|im_start|<|im_end|>",
        "<|im_startx|> <|IM_START|> <| im_start |>",
        "<|endoftext|>\u00e9<|endoftext|>e\u0301",
        "abc<think>def</think>ghi",
        "<<|im_start|>>",
    ]
    # --- long repeats ---
    c += [
        "a" * 1000,
        " " * 500,
        "\n" * 300,
        "ab" * 400,
        "hello " * 200,
        "的" * 300,
        "😀" * 100,
        "-" * 256,
        "=" * 100 + "\n" + "=" * 100,
        "The cat sat on the mat. " * 40,
        "\t" * 64 + "x",
        " " * 100 + "x",
        "x" + " " * 100,
        "." * 1000,
        "e\u0301" * 100,
    ]
    return c


def random_texts(rng, n):
    """Random strings over assigned code points of several scripts, plus structural characters."""
    ranges = [
        (0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF),
        (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xE00, 0xE7F), (0x10A0, 0x10FF), (0x1100, 0x11FF),
        (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x218F), (0x2190, 0x23FF),
        (0x2500, 0x27BF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
        (0xFB00, 0xFB4F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F300, 0x1F64F),
        (0x1F900, 0x1F9FF), (0x0300, 0x036F),
    ]
    structural = [" ", " ", " ", "\n", "\t", "\r\n", "'", "'s", "'LL", "1", "22", "\u00a0", "\u3000"]
    out = []
    while len(out) < n:
        k = rng.randint(1, 60)
        chars = []
        for _ in range(k):
            if rng.random() < 0.25:
                chars.append(rng.choice(structural))
                continue
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            ch = chr(cp)
            cat = unicodedata.category(ch)
            if cat in ("Cn", "Cs", "Co"):
                continue
            chars.append(ch)
        out.append("".join(chars))
    return out


def random_any_texts(rng, n):
    """Random strings over every assigned code point (any plane), weighted towards marks and spaces."""
    out = []
    while len(out) < n:
        k = rng.randint(1, 30)
        chars = []
        while len(chars) < k:
            r = rng.random()
            if r < 0.1:
                cp = rng.choice([0x20, 0x0A, 0x0D, 0x09, 0xA0, 0x85, 0x2028, 0x3000, 0x27, 0x17F])
            elif r < 0.2:
                cp = rng.randint(0x300, 0x36F)
            else:
                cp = rng.randint(0x20, 0x10FFFF) if rng.random() < 0.3 else rng.randint(0x20, 0x2FFFF)
            ch = chr(cp)
            if unicodedata.category(ch) in ("Cn", "Cs", "Co"):
                continue
            chars.append(ch)
        out.append("".join(chars))
    return out


def random_byte_id_cases(tok, rng, n):
    """Id sequences of single-byte tokens (often invalid UTF-8) to pin the decoder's U+FFFD policy."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    m = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + m)
            m += 1
    byte_tok = {b: tok.token_to_id(chr(c)) for b, c in zip(bs, cs)}
    interesting = [0x41, 0x20, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xA0, 0xED, 0x9F, 0xF0, 0x90, 0xF4,
                   0x8F, 0xF5, 0xFF, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80]
    out = []
    for _ in range(n):
        seq = [rng.choice(interesting) if rng.random() < 0.8 else rng.randint(0, 255)
               for _ in range(rng.randint(1, 12))]
        out.append([byte_tok[b] for b in seq])
    return out


def random_word_texts(rng, n):
    words = ["the", "The", "THE", "a", "of", "and", "to", "in", "is", "it's", "don't", "WE'LL", "hello",
             "world", "café", "naïve", "数据", "模型", "训练", "данные", "модель", "ολα", "مرحبا", "नमस्ते",
             "ไทย", "😀", "👍🏽", "123", "4.5", "x_y", "__init__", "()", "{}", "[]", "->", "=>", "!=", "...",
             "—", "–", "“quoted”", "«guillemets»", "<|endoftext|>", "<think>", "\n", "\n\n", "  ", "\t"]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        seps = [" ", " ", " ", "", "\n", "  ", ", ", ". "]
        out.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(k)))
    return out


def regex_class_tables(tok):
    """Classify every code point the way tokenizers' Split regex (Oniguruma) does, by probing the real
    pre-tokenizer: returns range lists for \\p{L}, \\p{N} and \\s. Oniguruma in tokenizers 0.23.2 carries
    Unicode 16 tables while the system ICU may be older, so the C++ scanner uses these instead of ICU."""
    pt = tok.pre_tokenizer

    def n(s):
        return len(pt.pre_tokenize_str(s))

    cls = {}
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if n("a" + c) == 1:
            cls[cp] = "L"
        elif n("!" + c) == 1:
            continue  # neither letter, number nor space
        elif n(c + c + "a") == 3:
            cls[cp] = "N"
        else:
            cls[cp] = "S"
    out = {"L": [], "N": [], "S": []}
    for cp in sorted(cls):
        k = cls[cp]
        r = out[k]
        if r and r[-1][1] == cp - 1:
            r[-1][1] = cp
        else:
            r.append([cp, cp])
    return out


def write_tables_cpp(tables, path, version):
    lines = ["// GENERATED by scripts/gen_tokenizer_golden.py --tables from tokenizers " + version + ": how the",
             "// Split regex of the Qwen2/Qwen3 pre-tokenizer (Oniguruma) classifies each non-ASCII code point.",
             "// Do not edit by hand.",
             "#include <cstddef>", "", "namespace rtp::text::detail {", "",
             "// Same definition as in tokenizer.cpp, which declares the arrays below.",
             "struct CodeRange {", "  char32_t lo, hi;", "};", ""]
    for key, name in (("L", "kLetterRanges"), ("N", "kNumberRanges"), ("S", "kSpaceRanges")):
        r = tables[key]
        lines.append("extern const CodeRange %s[];" % name)
        lines.append("extern const std::size_t %sCount;" % name)
        lines.append("const CodeRange %s[] = {" % name)
        for i in range(0, len(r), 6):
            lines.append("    " + " ".join("{0x%X, 0x%X}," % (a, b) for a, b in r[i:i + 6]))
        lines.append("};")
        lines.append("const std::size_t %sCount = sizeof(%s) / sizeof(%s[0]);" % (name, name, name))
        lines.append("")
    lines.append("}  // namespace rtp::text::detail")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer",
                                                        "tokenizer.json"))
    ap.add_argument("--output", default=os.path.join(ROOT, "data", "fixtures", "tokenizer", "golden.jsonl"))
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--random", type=int, default=200, help="number of random-code-point strings")
    ap.add_argument("--random-any", type=int, default=300, help="number of strings over all planes")
    ap.add_argument("--random-words", type=int, default=150, help="number of random word-salad strings")
    ap.add_argument("--tables", default=None,
                    help="also write the regex class tables (C++) to this path, e.g. lib/src/text/unicode_tables.cpp")
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    if args.tables:
        write_tables_cpp(regex_class_tables(tok), args.tables, tokenizers.__version__)
        print(f"wrote {args.tables}", file=sys.stderr)
    with open(args.tokenizer, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    rng = random.Random(args.seed)
    texts = (fixed_cases() + random_texts(rng, args.random) + random_word_texts(rng, args.random_words) +
             random_any_texts(rng, args.random_any))
    id_cases = random_byte_id_cases(tok, rng, 100)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        meta = {"tokenizers_version": tokenizers.__version__, "tokenizer_sha256": sha, "seed": args.seed,
                "count": len(texts), "decode_only": len(id_cases), "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
                "generator": "scripts/gen_tokenizer_golden.py"}
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            rec = {"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                   "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        for ids in id_cases:  # decode-only records (no "text")
            rec = {"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                   "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {len(texts)} cases to {args.output} (tokenizers {tokenizers.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
