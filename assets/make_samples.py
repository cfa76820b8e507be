"""Writes the small sample datasets in assets/ (deterministic; re-run to
regenerate). All text here is composed by this script, not copied from any
dataset.

    python assets/make_samples.py
"""

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUBJECTS = ["The film", "This movie", "The acting", "The plot", "The soundtrack", "The ending",
            "The director's new picture", "The cast", "The script", "The second half",
            "The animation", "The dialogue", "Every scene", "The lead performance"]
POSITIVE = ["wonderful", "moving", "brilliant", "charming", "gripping", "delightful", "superb",
            "heartfelt", "funny", "beautiful", "clever", "memorable", "touching", "fresh"]
NEGATIVE = ["dull", "boring", "clumsy", "tedious", "painful", "forgettable", "messy",
            "lifeless", "predictable", "bland", "confusing", "shallow", "awkward", "stale"]
ADVERBS = ["", "truly ", "rather ", "remarkably ", "utterly ", "surprisingly ", "quite ",
           "simply ", "really "]
POS_TAILS = ["and I would watch it again.", "from start to finish.", "- a real treat.",
             "and the audience loved it.", "; highly recommended!", "."]
NEG_TAILS = ["and I left early.", "from start to finish.", "- a waste of an evening.",
             "and the audience was restless.", "; skip it.", "."]

ZH_SUBJECTS = ["这部电影", "酒店的服务", "这本书", "房间", "演员的表演", "这家餐厅", "故事情节", "这款手机"]
ZH_POSITIVE = ["非常好", "很精彩", "令人满意", "特别棒", "很温馨", "值得推荐", "让人感动", "好极了"]
ZH_NEGATIVE = ["太差了", "很无聊", "让人失望", "非常糟糕", "不干净", "不值这个价", "浪费时间", "很难受"]
ZH_TAILS = ["。", "！", "，下次还会再来。", "，说实话。", "，朋友也这么说。", "。总体来说如此。"]


def english_sentiment(n, rng):
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.2
        words = NEGATIVE if positive == negated else POSITIVE
        adj = rng.choice(words)
        not_ = "not " if negated else ""
        tail = rng.choice(POS_TAILS if positive else NEG_TAILS)
        text = f"{rng.choice(SUBJECTS)} is {not_}{rng.choice(ADVERBS)}{adj} {tail}"
        rows.append({"text": text.replace(" .", ".").replace(" ;", ";"),
                     "label": "positive" if positive else "negative"})
    return rows


def chinese_sentiment(n, rng):
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        text = rng.choice(ZH_SUBJECTS) + rng.choice(ZH_POSITIVE if positive else ZH_NEGATIVE)
        rows.append({"text": text + rng.choice(ZH_TAILS), "label": "正面" if positive else "负面"})
    return rows


def english_pairs(n, rng):
    """Does the review (text_pair) agree with the claim (text)?"""
    rows = []
    for _ in range(n):
        claim_positive = rng.random() < 0.5
        review = english_sentiment(1, rng)[0]
        subject = rng.choice(SUBJECTS).lower()
        claim = f"The reviewer liked {subject}." if claim_positive else \
            f"The reviewer disliked {subject}."
        agree = (review["label"] == "positive") == claim_positive
        rows.append({"claim": claim, "review": review["text"],
                     "label": "agree" if agree else "disagree"})
    return rows


FIRST = ["Alice", "Bob", "Maria", "Chen", "Olga", "Samir", "Grace", "Tom", "Yuki", "Pedro"]
LAST = ["Johnson", "Smith", "Garcia", "Wei", "Ivanova", "Haddad", "Hopper", "Baker", "Sato"]
PLACES = [["Paris"], ["New", "York"], ["Tokyo"], ["Cairo"], ["Buenos", "Aires"], ["Oslo"],
          ["San", "Francisco"], ["Lagos"], ["Berlin"], ["Hong", "Kong"]]
ORGS = [["Acme", "Corp"], ["the", "United", "Nations"], ["Globex"], ["Red", "Cross"],
        ["Initech"], ["the", "World", "Bank"], ["Umbrella", "Labs"]]
NER_TEMPLATES = ["{PER} visited {LOC} last week .", "{PER} works for {ORG} in {LOC} .",
                 "{ORG} opened an office in {LOC} .", "Yesterday {PER} met {PER} .",
                 "{PER} left {ORG} and moved to {LOC} .", "The report from {ORG} surprised {PER} .",
                 "In {LOC} , {PER} spoke about {ORG} ."]
ZH_PER = ["张伟", "李娜", "王芳", "刘洋", "陈静"]
ZH_LOC = ["北京", "上海", "广州", "杭州", "成都"]
ZH_ORG = ["清华大学", "人民银行", "中国移动", "红十字会"]
ZH_TEMPLATES = ["{PER}去了{LOC}。", "{PER}在{ORG}工作。", "{ORG}位于{LOC}。", "{PER}和{PER}在{LOC}见面。"]


def english_ner(n, rng):
    """Sentences as (words, IOB2 tags)."""
    out = []
    for _ in range(n):
        words, tags = [], []
        for piece in rng.choice(NER_TEMPLATES).split():
            if piece in ("{PER}", "{LOC}", "{ORG}"):
                kind = piece[1:4]
                ent = ([rng.choice(FIRST), rng.choice(LAST)] if kind == "PER" and rng.random() < 0.6
                       else [rng.choice(FIRST)] if kind == "PER"
                       else rng.choice(PLACES) if kind == "LOC" else rng.choice(ORGS))
                words += ent
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(ent) - 1)
            else:
                words.append(piece)
                tags.append("O")
        out.append((words, tags))
    return out


def chinese_ner(n, rng):
    """Character-per-line sentences with BMES tags."""
    out = []
    for _ in range(n):
        chars, tags = [], []
        template = rng.choice(ZH_TEMPLATES)
        i = 0
        while i < len(template):
            if template[i] == "{":
                kind = template[i + 1:i + 4]
                ent = rng.choice({"PER": ZH_PER, "LOC": ZH_LOC, "ORG": ZH_ORG}[kind])
                chars += list(ent)
                tags += ([f"S-{kind}"] if len(ent) == 1 else
                         [f"B-{kind}"] + [f"M-{kind}"] * (len(ent) - 2) + [f"E-{kind}"])
                i += 5
            else:
                chars.append(template[i])
                tags.append("O")
                i += 1
        out.append((chars, tags))
    return out


JOBS = ["a baker", "an engineer", "a painter", "a teacher", "a pilot", "a doctor", "a farmer"]
TOWNS = ["Millbrook", "Ashford", "Port Elling", "Greywater", "Kelso Bay", "Dunmore", "Rivenhall"]
HOBBIES = ["chess", "sailing", "pottery", "birdwatching", "cycling", "the violin", "gardening"]


def squad_sample(n_articles, rng):
    """A SQuAD v1.1 file about invented people: each article one context
    and four questions whose answers are spans of it."""
    articles = []
    for a in range(n_articles):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        town, job, hobby = rng.choice(TOWNS), rng.choice(JOBS), rng.choice(HOBBIES)
        year = rng.randint(1950, 2005)
        context = (f"{name} was born in {town} in {year}. After school, {name.split()[0]} "
                   f"became {job} and worked there for many years. In the evenings "
                   f"{name.split()[0]} enjoys {hobby}, and friends say nobody in {town} is "
                   f"better at it.")
        qas = []
        for k, (question, answer) in enumerate([
                (f"Where was {name} born?", town), (f"When was {name} born?", str(year)),
                (f"What did {name.split()[0]} become after school?", job),
                (f"What does {name.split()[0]} enjoy in the evenings?", hobby)]):
            qas.append({"id": f"q{a}_{k}", "question": question,
                        "answers": [{"text": answer, "answer_start": context.index(answer)}]})
        articles.append({"title": f"Person {a}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def squad_v2_sample(n_articles, rng):
    """A SQuAD v2.0 file in the same style: each context with its four
    answerable questions and two it does not answer (is_impossible): about
    things the text never says, or about another person."""
    data = squad_sample(n_articles, rng)
    for a, article in enumerate(data["data"]):
        para = article["paragraphs"][0]
        first = para["qas"][0]["question"][len("Where was "):-len(" born?")]
        name = first.split()[0]
        other = first
        while other.split()[0] in para["context"] or other.split()[1] in para["context"]:
            other = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        unanswerable = [f"Who is {first} married to?", f"What is the name of {name}'s dog?",
                        f"Where was {other} born?", f"When did {name} retire?"]
        for k, question in enumerate(rng.sample(unanswerable, 2), start=4):
            para["qas"].append({"id": f"q{a}_{k}", "question": question, "answers": [],
                                "is_impossible": True})
    data["version"] = "v2.0"
    return data


def write_columns(sentences, name):
    with open(HERE / name, "w", encoding="utf-8") as f:
        for words, tags in sentences:
            f.writelines(f"{w} {t}\n" for w, t in zip(words, tags))
            f.write("\n")


def write(rows, name):
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main():
    rng = random.Random(20261129)
    write(english_sentiment(1200, rng), "sentiment_en.csv")
    write(chinese_sentiment(600, rng), "sentiment_zh.csv")
    write(english_pairs(800, rng), "pairs_en.csv")
    write_columns(english_ner(400, rng), "ner_en.conll")
    write_columns(chinese_ner(300, rng), "ner_zh.bmes")
    import json

    with open(HERE / "qa_en.json", "w", encoding="utf-8") as f:
        json.dump(squad_sample(60, rng), f, indent=1)
    with open(HERE / "qa_en_v2.json", "w", encoding="utf-8") as f:
        json.dump(squad_v2_sample(60, rng), f, indent=1)


if __name__ == "__main__":
    main()
