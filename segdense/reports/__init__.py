"""Reports to look at: the dataset doctor's markdown, the evaluation and training HTML pages, and their plots
(matplotlib, headless). Every page is self-contained: it references PNGs written beside it, so it opens from disk."""
