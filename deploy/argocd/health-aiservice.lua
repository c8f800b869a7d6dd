-- Argo CD health check for skyloom.io/AIService.
-- Reads metadata.generation, status.observedGeneration and the kstatus conditions that the
-- Skyloom operator writes (each condition carries its own observedGeneration).
local hs = {}
local generation = obj.metadata.generation or 0
local status = obj.status or {}
local observed = status.observedGeneration

-- Reasons that mean "will not get better by waiting".
local failureReasons = {
  InvalidSpec = true,
  NoFeasiblePlacement = true,
  NoEligibleCloud = true,
  PartiallyPlaced = true,
  ProgressDeadlineExceeded = true,
}

local function find(conditionType)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

-- A condition speaks for the current spec when it says so itself, or, lacking its own
-- observedGeneration, when the status as a whole is current.
local function current(c)
  if c == nil then
    return false
  end
  local seen = c.observedGeneration or observed
  return seen ~= nil and seen >= generation
end

local function text(c)
  local parts = {}
  if c.reason ~= nil and c.reason ~= "" then
    table.insert(parts, c.reason)
  end
  if c.message ~= nil and c.message ~= "" then
    table.insert(parts, c.message)
  end
  return table.concat(parts, ": ")
end

-- Conditions that make the service Degraded when they speak for the current spec, in order.
local degradedWhen = {
  { type = "Stalled", status = "True" },
  { type = "Progressing", status = "False", reasons = { ProgressDeadlineExceeded = true } },
  { type = "Scheduled", status = "False" },
  { type = "Ready", status = "False", reasons = failureReasons },
}
for _, rule in ipairs(degradedWhen) do
  local c = find(rule.type)
  if current(c) and c.status == rule.status and (rule.reasons == nil or rule.reasons[c.reason]) then
    hs.status = "Degraded"
    hs.message = text(c)
    return hs
  end
end

if observed == nil or observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for Skyloom to roll out generation " .. generation
  return hs
end

local ready = find("Ready")
if current(ready) and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready)
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = text(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
