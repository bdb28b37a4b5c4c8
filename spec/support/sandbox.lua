--- Specs start the sandbox through the same launcher the demo and the benchmark use.
return require("wxpay.sandbox.process")
