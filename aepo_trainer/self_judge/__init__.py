"""The policy as its own judge: JSFT training rows (`jsft`) and best-of-n sampling (`best_of_n`)."""
