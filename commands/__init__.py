"""Commands that orchestrate several rooms: `seq2vae quickstart` (data -> train -> export -> eval ->
report), `seq2vae sweep` (a sweep table's rows trained and evaluated locally) and `seq2vae plan` (a
training config read and planned on a layout)."""
