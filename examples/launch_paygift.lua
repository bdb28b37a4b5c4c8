--- The last step of examples/launch.lua: a 支付有礼 activity over the stock the launch created,
-- and (against the sandbox) a simulated payment over its threshold that issues the prize, whose
-- COUPON.SEND callback names the activity in attach_info.act_code.
--
-- Loaded by launch.lua with `dofile`; returns `function(ctx)` where ctx holds `client`,
-- `mchid`, `stock` (the stock as `busifavor.stocks.get` answered it), `image_url` (an uploaded
-- image), and for the sandbox `control(path, body)`, `listen()` and `receive(srv)`.
-- Returns a summary table `{ activity_id, out_request_no, coupon_code? }`; raises on failure.

return function(ctx)
  local client, stock = ctx.client, ctx.stock
  -- The prize must cover the activity: the activity runs in the stock's own window.
  local window = stock.coupon_use_rule.coupon_available_time
  local act, err, meta = client.paygift.create{
    activity_base_info = { activity_name = "开业支付有礼", activity_second_title = "满100送券",
      merchant_logo_url = ctx.image_url, begin_time = window.available_begin_time,
      end_time = window.available_end_time, delivery_purpose = "OFF_LINE_PAY" },
    award_send_rule = { transaction_amount_minimum = 10000, send_content = "SINGLE_COUPON",
      award_list = { { stock_id = stock.stock_id, original_image_url = ctx.image_url } },
      merchant_id_list = { ctx.mchid } },
  }
  if not act then error("paygift create: " .. tostring(err), 0) end
  print(("支付有礼 activity %s over stock %s (out_request_no %s)"):format(act.activity_id, stock.stock_id,
    meta.out_request_no))
  local summary = { activity_id = act.activity_id, out_request_no = meta.out_request_no }
  if not ctx.control then
    print("Not pointed at the sandbox: a payment cannot be simulated against the live API; skipped.")
    return summary
  end
  local srv, url = ctx.listen()
  local ok, perr = pcall(function()
    assert(client.busifavor.callbacks.set{ notify_url = url })
    local res, status = ctx.control("/paygift/pay", { mchid = ctx.mchid, openid = "oLaunchPayer0001",
                                                      amount = 12800 })
    assert(status == 200 and res.matched, "the payment matched no activity")
    assert(res.activity_id == act.activity_id and #res.coupons == 1, "one prize coupon issued")
    local note, rerr = ctx.receive(srv)
    assert(note, rerr and tostring(rerr))
    local sent = assert(client.busifavor.send_event(note))
    assert(sent.send_channel == "BUSICOUPON_SEND_CHANNEL_PAYGIFT", "sent through the 支付有礼 channel")
    assert(note.attach_info and note.attach_info.act_code == act.activity_id, "act_code names the activity")
    assert(sent.coupon_code == res.coupons[1].coupon_code)
    print(("  payment of 128.00 yuan (%s): COUPON.SEND coupon %s, act_code %s"):format(res.transaction_id,
      sent.coupon_code, note.attach_info.act_code))
    summary.coupon_code = sent.coupon_code
  end)
  srv:close()
  if not ok then error("paygift payment: " .. tostring(perr), 0) end
  return summary
end
