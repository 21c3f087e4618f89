"""An HTML check for the reports: parses a page with html.parser, collects its tables, images and links, and
asserts that every referenced file exists and nothing outside the report folder's files is needed."""
from html.parser import HTMLParser
from pathlib import Path


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.scripts, self.tables = [], [], 0, {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs.get("href", ""))
        elif tag in ("script", "link", "iframe"):
            self.scripts += 1
        elif tag == "table":
            self._table = []
            self.tables[attrs.get("id", f"table{len(self.tables)}")] = self._table
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def check_page(path: Path) -> PageParser:
    """Parse ``path``; every <img> and <a> target must be a relative file that exists; no scripts or stylesheets
    from elsewhere (the page opens from disk)."""
    parser = PageParser()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser.feed(text)
    assert parser.scripts == 0
    for ref in parser.images + parser.links:
        assert "://" not in ref and not ref.startswith("/"), ref
        assert (path.parent / ref).is_file(), f"{path} references {ref}, which does not exist"
    return parser
