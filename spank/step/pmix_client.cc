// PMIx for the helper tasks of an epoch (pmix_client.h).
#include "spank/step/pmix_client.h"

#include <cerrno>
#include <cstring>

namespace stasis::step {

Pmix::~Pmix() {
  if (up_) PMIx_Finalize(nullptr, 0);
}

Status Pmix::Init() {
  pmix_status_t rc = PMIx_Init(&me_, nullptr, 0);
  if (rc != PMIX_SUCCESS)
    return Status::Error(ENOTCONN, std::string("PMIx_Init: ") + PMIx_Error_string(rc) +
                                       " (run inside srun --mpi=pmix)");
  up_ = true;
  pmix_proc_t all;
  PMIX_PROC_CONSTRUCT(&all);
  std::memcpy(all.nspace, me_.nspace, sizeof all.nspace);
  all.rank = PMIX_RANK_WILDCARD;
  pmix_value_t* val = nullptr;
  rc = PMIx_Get(&all, PMIX_JOB_SIZE, nullptr, 0, &val);
  if (rc != PMIX_SUCCESS || !val)
    return Status::Error(EIO, std::string("PMIx job size: ") + PMIx_Error_string(rc));
  size_ = val->data.uint32;
  PMIX_VALUE_RELEASE(val);
  return Status::Ok();
}

Status Pmix::Put(const std::string& key, const std::string& value) {
  pmix_value_t v;
  PMIX_VALUE_CONSTRUCT(&v);
  v.type = PMIX_STRING;
  v.data.string = const_cast<char*>(value.c_str());
  pmix_status_t rc = PMIx_Put(PMIX_GLOBAL, key.c_str(), &v);
  if (rc != PMIX_SUCCESS)
    return Status::Error(EIO, "PMIx_Put " + key + ": " + PMIx_Error_string(rc));
  rc = PMIx_Commit();
  if (rc != PMIX_SUCCESS)
    return Status::Error(EIO, std::string("PMIx_Commit: ") + PMIx_Error_string(rc));
  return Status::Ok();
}

Status Pmix::Fence(int timeout_seconds) {
  pmix_proc_t all;
  PMIX_PROC_CONSTRUCT(&all);
  std::memcpy(all.nspace, me_.nspace, sizeof all.nspace);
  all.rank = PMIX_RANK_WILDCARD;
  pmix_info_t info[2];
  PMIX_INFO_CONSTRUCT(&info[0]);
  PMIX_INFO_CONSTRUCT(&info[1]);
  bool collect = true;
  PMIX_INFO_LOAD(&info[0], PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
  int t = timeout_seconds;
  PMIX_INFO_LOAD(&info[1], PMIX_TIMEOUT, &t, PMIX_INT);
  pmix_status_t rc = PMIx_Fence(&all, 1, info, 2);
  PMIX_INFO_DESTRUCT(&info[0]);
  PMIX_INFO_DESTRUCT(&info[1]);
  if (rc != PMIX_SUCCESS)
    return Status::Error(ETIMEDOUT, std::string("PMIx_Fence: ") + PMIx_Error_string(rc));
  return Status::Ok();
}

Result<std::string> Pmix::Get(uint32_t rank, const std::string& key) {
  pmix_proc_t p;
  PMIX_PROC_CONSTRUCT(&p);
  std::memcpy(p.nspace, me_.nspace, sizeof p.nspace);
  p.rank = rank;
  pmix_value_t* val = nullptr;
  pmix_status_t rc = PMIx_Get(&p, key.c_str(), nullptr, 0, &val);
  if (rc != PMIX_SUCCESS || !val || val->type != PMIX_STRING)
    return Status::Error(
        EIO, "PMIx_Get " + key + " of rank " + std::to_string(rank) + ": " + PMIx_Error_string(rc));
  std::string out = val->data.string ? val->data.string : "";
  PMIX_VALUE_RELEASE(val);
  return out;
}

}  // namespace stasis::step
