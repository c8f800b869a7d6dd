-- Argo CD health check for skyloom.io/CloudPool.
-- Healthy when the operator has probed the member for the current generation and found it
-- Ready; Suspended when it is Ready but cordoned; Degraded when it is not Ready or Stalled.
local hs = {}
local generation = obj.metadata.generation or 0
local status = obj.status or {}
local observed = status.observedGeneration

local function find(conditionType)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
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

if observed == nil or observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for Skyloom to probe generation " .. generation
  return hs
end

local stalled = find("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end

local ready = find("Ready")
if ready ~= nil and ready.status == "True" then
  if obj.spec ~= nil and obj.spec.cordoned == true then
    hs.status = "Suspended"
    hs.message = "Cordoned: no new placements"
  else
    hs.status = "Healthy"
    hs.message = text(ready)
  end
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the first probe of the member cluster"
return hs
