"""ONE run's maths, no batch axis anywhere: the objective and its derivatives (:mod:`.objective`),
the closed forms of the theory (:mod:`.theory`), the exact collapsed representation
(:mod:`.collapsed`), the NC metrics (:mod:`.metrics`) and Lanczos on Hessian-vector products
(:mod:`.lanczos`). Vmap outside."""
